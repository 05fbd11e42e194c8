"""Qwen: the Qwen2 / Qwen2.5 / Qwen3 dense decoder as a Flax NNX module.

    h_0 = embed[input_ids];  h_l = DecoderLayer_l(h_{l-1});  logits = RMSNorm(h_L) @ W_unembed^T

Positions default to cumsum(attention_mask) - 1 (clipped at 0), which is right for left
padding (generation), right padding (training) and a left-padded prompt followed by a
right-padded response. With a KVCache (see cache.py) they default to the number of valid
cache slots before each token.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from entropy_rl.model.cache import KVCache, write_keys, write_values
from entropy_rl.model.config import QwenConfig
from entropy_rl.model.layers import DecoderLayer, RMSNorm, init_param, rope_tables, unembed
from entropy_rl.parallel.sharding import constrain


# Activations [B, T, D] are split over the batch only (under jax.set_mesh, see constrain).
BATCH_ACTIVATION = ("batch", None, None)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """max(cumsum(mask) - 1, 0) [B, T]: the index of each token among the real tokens."""
    chex.assert_rank(attention_mask, 2)
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _run_layer(layer, x, cos, sin, attention_mask, segment_ids):
    return layer(x, cos, sin, attention_mask, segment_ids=segment_ids)


def stack_layers(layers) -> tuple[nnx.GraphDef, nnx.State]:
    """(one layer's graphdef, the layers' parameters stacked on a new leading axis [L, ...]).

    Under `jax.set_mesh` each stacked parameter keeps its own logical sharding (the layer
    axis unsplit). Used inside a traced program, the stack is a copy of the layers'
    parameters in their storage dtype; gradients flow back to each layer's own arrays.
    """
    graphdef, _ = nnx.split(layers[0])

    def stack(*variables):
        value = jnp.stack([v[...] for v in variables])
        axes = variables[0].get_metadata().get("out_sharding")
        return variables[0].replace(constrain(value, (None, *axes)) if axes else value)

    states = [nnx.state(layer) for layer in layers]
    return graphdef, jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))


class Qwen(nnx.Module):
    """Qwen dense decoder. See `__call__`, `hidden_states`, `unembedding`, `init_cache`, `prefill`."""

    def __init__(self, config: QwenConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = jnp.dtype(config.param_dtype)
        self.embed_tokens = init_param(rngs, (config.vocab_size, config.hidden_size),
                                       ("vocab", "embed"), pd)
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, axis="norm", param_dtype=pd)
        if not config.tie_word_embeddings:
            self.lm_head = init_param(rngs, (config.vocab_size, config.hidden_size),
                                      ("vocab", "embed"), pd)

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)

    def unembedding(self) -> jax.Array:
        """[V, D] output projection: lm_head, or the token embedding when tied."""
        weight = self.embed_tokens if self.config.tie_word_embeddings else self.lm_head
        return weight[...]

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KVCache with `max_length` slots (prompt + response) per row."""
        c = self.config
        return KVCache.zeros(c.num_hidden_layers, batch_size, max_length, c.num_key_value_heads,
                             c.head_dim, self.dtype)

    def _embed(self, input_ids):
        chex.assert_rank(input_ids, 2)
        embedded = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)
        return constrain(embedded, BATCH_ACTIVATION)

    def _rope(self, positions):
        return rope_tables(positions, self.config.head_dim, self.config.rope_theta)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                      positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        """Final RMS-normed hidden states [B, T, D] (compute dtype) for input_ids [B, T].

        logits = hidden_states @ unembedding().T; the chunked losses use this to avoid
        materialising [B, T, V] at once. Packed rows (several sequences per row) pass
        segment_ids int32 [B, T] (contiguous runs 1, 2, ..., 0 on padding: no token attends
        outside its segment) and each sequence's own positions.
        """
        return self._forward(input_ids, attention_mask, positions, segment_ids)[0]

    def prefill(self, input_ids: jax.Array, attention_mask: jax.Array, max_length: int
                ) -> tuple[jax.Array, KVCache]:
        """(final normed hidden [B, T, D], a cache of `max_length` slots holding the T tokens).

        The forward of a fresh batch: its tokens attend only to each other, not over the
        max_length - T empty slots a cached call would also score. The cache then continues
        with one-token calls exactly as after `model(ids, mask, cache=init_cache(...))`.
        """
        hidden, keys_values = self._forward(input_ids, attention_mask, None)
        cache = self.init_cache(input_ids.shape[0], max_length)
        return hidden, KVCache(
            k=tuple(write_keys(empty, k, 0) for empty, (k, _) in zip(cache.k, keys_values)),
            v=tuple(write_values(empty, v, 0) for empty, (_, v) in zip(cache.v, keys_values)),
            valid=cache.write_mask(attention_mask),
            length=jnp.asarray(input_ids.shape[1], jnp.int32),
        )

    def _forward(self, input_ids, attention_mask, positions, segment_ids=None):
        """(final normed hidden [B, T, D], each layer's (k, v) [B, T, KV, head_dim])."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = default_positions(attention_mask)
        cos, sin = self._rope(positions)
        x = self._embed(input_ids)
        if self.config.scan_layers:
            x, (keys, values) = self._scan_layers(x, cos, sin, attention_mask, segment_ids)
            return self.norm(x), list(zip(keys, values))
        run_layer = nnx.remat(_run_layer, policy=self._remat_policy) if self.config.remat else _run_layer
        keys_values = []
        for layer in self.layers:
            x, kv = run_layer(layer, x, cos, sin, attention_mask, segment_ids)
            x = constrain(x, BATCH_ACTIVATION)
            keys_values.append(kv)
        return self.norm(x), keys_values

    def _scan_layers(self, x, cos, sin, attention_mask, segment_ids):
        """(x after the L layers, (k, v) each [L, B, T, KV, head_dim]) with jax.lax.scan over
        the stacked layers (`stack_layers`): one compiled layer body whatever L, each layer
        rematerialised (config.remat_policy) when config.remat."""
        graphdef, stacked = stack_layers(self.layers)

        def body(h, layer_state):
            h, kv = nnx.merge(graphdef, layer_state)(h, cos, sin, attention_mask, segment_ids=segment_ids)
            return constrain(h, BATCH_ACTIVATION), kv

        if self.config.remat:
            body = jax.checkpoint(body, policy=self._remat_policy)
        return jax.lax.scan(body, x, stacked)

    @property
    def _remat_policy(self):
        """The jax.checkpoint policy of a rematerialised layer (config.remat_policy)."""
        return getattr(jax.checkpoint_policies, self.config.remat_policy)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits [B, T, V] from final hidden states [B, T, D]."""
        chex.assert_rank(hidden, 3)
        logits = unembed(hidden, self.unembedding().astype(self.dtype))
        return constrain(logits, ("batch", None, "vocab"))

    def hidden_states_with_cache(self, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache,
                                 *, positions: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
        """(final normed hidden [B, T, D], new cache): the T tokens attend to the valid cached
        slots and causally to each other, then are written at slots [cache.length, cache.length + T)."""
        if positions is None:
            real = attention_mask.astype(jnp.int32)
            tokens_before = jnp.sum(cache.valid, axis=-1, keepdims=True, dtype=jnp.int32)
            positions = tokens_before + jnp.cumsum(real, axis=-1) - real
        cos, sin = self._rope(positions)
        x = self._embed(input_ids)
        keys, values = [], []
        for layer, k_cache, v_cache in zip(self.layers, cache.k, cache.v):
            x, (k_cache, v_cache) = layer(x, cos, sin, attention_mask, (k_cache, v_cache, cache.valid, cache.length))
            x = constrain(x, BATCH_ACTIVATION)
            keys.append(k_cache)
            values.append(v_cache)
        new_cache = KVCache(k=tuple(keys), v=tuple(values), valid=cache.write_mask(attention_mask),
                            length=cache.length + input_ids.shape[1])
        return self.norm(x), new_cache

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 positions: jax.Array | None = None, cache: KVCache | None = None):
        """float32 logits [B, T, V] for input_ids [B, T] (int32), attention_mask [B, T] (1 = token).

        With `cache`: writes the T tokens at slots [cache.length, cache.length + T) and
        returns (logits, new_cache); the caller keeps cache.length + T <= max_length.
        """
        if cache is None:
            return self.logits(self.hidden_states(input_ids, attention_mask, positions=positions))
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        hidden, new_cache = self.hidden_states_with_cache(input_ids, attention_mask, cache,
                                                          positions=positions)
        return self.logits(hidden), new_cache
