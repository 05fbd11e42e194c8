"""Building blocks of the Qwen decoder: parameters with logical axes, RMSNorm, RoPE,
grouped-query attention (its kernels by backend in model/attention.py; the KV-cache path
here) and the SwiGLU MLP.

Parameter layouts are chosen for sharding by name (see entropy_rl.parallel): projections
keep heads as their own axis, e.g. q_proj [heads, head_dim, embed], o_proj
[embed, heads, head_dim]. Like transformers' Linear weights (and the embedding and lm_head,
[vocab, embed]) every projection is stored [out, in]: XLA:CPU multiplies by it about 1.1-1.2x
faster than by [in, out] when the weights stream from memory (a decode step), and no slower
in training.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from entropy_rl.model.attention import causal_attention, causal_padding_mask, grouped_attention
from entropy_rl.model.blockwise import NEG_INF
from entropy_rl.model.cache import KEYS_SLOT_AXIS, VALUES_SLOT_AXIS, write_keys, write_values
from entropy_rl.parallel.xla import traced_platform

# A decode step reads the KV cache in chunks of this many slots (see `_single_query_attention`).
# On the CPU, under the sampler's compiler options, chunks of 64 took 0.54-0.69x the CPU time
# of one pass over the whole cache and 0.84-0.93x that of chunks of 128
# (tools/bench/decode_chunks.py: small model, batch 64, 384 slots, 192 / 320 of them valid).
DECODE_CHUNK_SLOTS = 64


def logical_param(value: jax.Array, axes: tuple) -> nnx.Param:
    """An nnx.Param carrying its logical axis names (`out_sharding` metadata).

    Eager sharding is off: the names are logical ("embed", "heads", ...) and are mapped to
    mesh axes only by `entropy_rl.parallel.shard_model` / `load_hf(mesh=...)`.
    """
    if len(axes) != value.ndim:
        raise ValueError(f"{len(axes)} axis names {axes} for a parameter of shape {value.shape}")
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def init_param(rngs: nnx.Rngs, shape: tuple, axes: tuple, dtype, stddev: float = 0.02):
    """A normal(0, stddev) parameter (transformers' Qwen initializer_range is 0.02)."""
    return logical_param(stddev * jax.random.normal(rngs.params(), shape, dtype), axes)


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32, returned in x.dtype."""

    def __init__(self, dim: int, eps: float, *, axis: str, param_dtype):
        self.eps = eps
        self.weight = logical_param(jnp.ones((dim,), param_dtype), (axis,))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (normed * self.weight[...].astype(jnp.float32)).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float):
    """cos, sin [B, T, 1, head_dim] (float32) for integer positions [B, T].

    inv_freq_i = theta^(-2i/head_dim); angles are duplicated over both halves
    (transformers' rotate_half convention, not interleaved pairs).
    """
    chex.assert_rank(positions, 2)
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin for x [B, T, heads, head_dim], in float32."""
    chex.assert_rank(x, 4)
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def cached_attention(q, k, v, mask, k_cache, v_cache, cache_mask) -> jax.Array:
    """Attention of T new queries over the cached slots and the T new tokens.

    q [B, T, H, D]; k/v [B, T, KV, D] (the new tokens); mask bool [B, T, T] (which new
    tokens each query sees); k_cache [B, KV, D, S] and v_cache [B, KV, S, D] (see KVCache);
    cache_mask bool [B, S] (the cached slots every query sees) -> [B, T, H, D]. Equals
    `grouped_attention` over the keys concat(cache, new) with the mask
    concat(cache_mask, mask); the cache is only read, so the caller can then write the new
    tokens into it in place.

    A single query (a decode step) takes `_single_query_attention`, which never copies the
    cache; concatenating would copy it every step, and as a batched matmul the scores are
    B * KV products of [G, D] x [D, S], too small for the matmul kernels (about 5x slower
    on CPU for a 168M model).
    """
    chex.assert_rank([q, k, v, mask, k_cache, v_cache, cache_mask], [4, 4, 4, 3, 4, 4, 2])
    batch, length, heads, head_dim = q.shape
    if length > 1:
        keys = jnp.concatenate([k_cache.transpose(0, 3, 1, 2), k], axis=1)
        values = jnp.concatenate([v_cache.transpose(0, 2, 1, 3), v], axis=1)
        seen_slots = jnp.broadcast_to(cache_mask[:, None, :], (batch, length, cache_mask.shape[1]))
        return grouped_attention(q, keys, values, jnp.concatenate([seen_slots, mask], axis=-1))
    kv_heads = k.shape[2]
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = _single_query_attention(q, k[:, 0], v[:, 0], mask[:, 0, 0], k_cache, v_cache, cache_mask)
    return out.reshape(batch, 1, heads, head_dim)


def _single_query_attention(q, k, v, sees_itself, k_cache, v_cache, cache_mask, chunk_slots=None) -> jax.Array:
    """One query per row: q [B, KV, G, D]; its own k/v [B, KV, D], sees_itself bool [B];
    k_cache [B, KV, D, S], v_cache [B, KV, S, D], cache_mask bool [B, S] -> [B, KV, G, D].

    softmax over the valid cached slots and the row's own key of q . k / sqrt(D) (float32),
    times the values. The cache is read in chunks of C = chunk_slots slots, [j C, (j + 1) C),
    with an online softmax (running max m, sum l and output acc, started from the own key:
    m = its score, l = 1, acc = its value), only up to the chunk of the last slot valid in
    any row (a loop of a traced trip count): the rows of the refill sampler's slots, at
    different steps, read no more chunks than the longest needs, as a static decode segment.
    The last S mod C slots, if any, are one shorter chunk, read on every call (the sampler's
    caches are whole chunks: `Program.cache_slots`).

    A chunk with no valid slot for a row leaves its (m, l, acc) bitwise unchanged (its
    scores are NEG_INF, finite: the max stays m, the correction is exp(0) = 1 and its
    probabilities are 0), so a row's output does not depend on the slots no row sees, the
    other rows or the number of chunks of the cache. chunk_slots None: DECODE_CHUNK_SLOTS.
    Decode only: the loop is not reverse-differentiable.
    """
    slots = cache_mask.shape[1]
    chunk_slots = DECODE_CHUNK_SLOTS if chunk_slots is None else chunk_slots
    scale = q.shape[-1] ** -0.5
    own = jnp.sum(q.astype(jnp.float32) * k[:, :, None].astype(jnp.float32), axis=-1) * scale
    running = (jnp.where(sees_itself[:, None, None], own, NEG_INF), jnp.ones_like(own),
               jnp.broadcast_to(v[:, :, None].astype(jnp.float32), q.shape))

    def read_chunk(start, size, running):
        keys, values, valid = (jax.lax.dynamic_slice_in_dim(x, start, size, axis) for x, axis in
                               ((k_cache, KEYS_SLOT_AXIS), (v_cache, VALUES_SLOT_AXIS), (cache_mask, 1)))
        return _attend_chunk(q, keys, values, valid, scale, running)

    whole_chunks, tail = divmod(slots, chunk_slots)
    if whole_chunks == 1 and not tail:  # one chunk: the cache itself (a slice of it all is a copy on TPU)
        running = _attend_chunk(q, k_cache, v_cache, cache_mask, scale, running)
    elif whole_chunks:
        seen_slots = jnp.max(jnp.where(cache_mask.any(0), jnp.arange(1, slots + 1), 0))
        chunks_to_read = jnp.minimum(-(-seen_slots // chunk_slots), whole_chunks)
        running = jax.lax.fori_loop(0, chunks_to_read, lambda j, r: read_chunk(j * chunk_slots, chunk_slots, r),
                                    running)
    if tail:
        running = read_chunk(slots - tail, tail, running)
    _, total, out = running
    return (out / total[..., None]).astype(v.dtype)


def _attend_chunk(q, keys, values, valid, scale, running):
    """The online softmax's (m, l, acc) [B, KV, G], [B, KV, G], [B, KV, G, D] (float32) after
    the chunk keys [B, KV, D, C], values [B, KV, C, D], valid bool [B, C]:

        s = q . keys / sqrt(D) (NEG_INF where not valid),  m' = max(m, max_c s),
        p = exp(s - m') where valid else 0,  l' = l e^(m - m') + sum_c p,
        acc' = acc e^(m - m') + sum_c p values.

    On the CPU the products are elementwise, reduced over d and c, which XLA:CPU fuses into
    one pass over each chunk; elsewhere two dots with float32 accumulation: the TPU compiler
    turns the elementwise form into copies of each layer's keys (as float32) and values on
    every decode step (tests/test_plan.py), the dots read the cache in place.
    """
    largest, total, out = running
    on_cpu = traced_platform() == "cpu"
    if on_cpu:
        scores = jnp.sum(q.astype(jnp.float32)[..., None] * keys[:, :, None].astype(jnp.float32), axis=3)
    else:
        scores = jnp.einsum("bkgd,bkdc->bkgc", q, keys, preferred_element_type=jnp.float32)
    valid = valid[:, None, None, :]
    scores = jnp.where(valid, scores * scale, NEG_INF)
    new_largest = jnp.maximum(largest, scores.max(-1))
    correction = jnp.exp(largest - new_largest)
    probs = jnp.where(valid, jnp.exp(scores - new_largest[..., None]), 0.0)
    if on_cpu:
        from_chunk = jnp.sum(probs[..., None] * values[:, :, None].astype(jnp.float32), axis=3)
    else:
        from_chunk = jnp.einsum("bkgc,bkcd->bkgd", probs.astype(values.dtype), values,
                                preferred_element_type=jnp.float32)
    return (new_largest, total * correction + probs.sum(-1),
            out * correction[..., None] + from_chunk)


def linear(x: jax.Array, weight: jax.Array) -> jax.Array:
    """x [..., M] @ weight^T for a weight [N, M] (stored [out, in]) -> [..., N].

    A 2-D matmul by the transposed weight: XLA:CPU reads it in place, whereas an einsum
    over a weight with heads as their own axis, e.g. [heads, head_dim, M], gets a
    transposed copy of the weight at every call.
    """
    return x @ weight.T


def weight_gradient(x: jax.Array, d_y: jax.Array) -> jax.Array:
    """dW [N, M] of y = x W^T for W [N, M]: sum over tokens of d_y^T x, for x [..., M] and
    d_y [..., N] (leading axes flattened).

    Computed as (x^T d_y)^T, which XLA:CPU runs about 1.1x faster than d_y^T x
    (2048 x 1024 x 3072: 185 vs 165 GFLOP/s; the lm_head's gradient: 1.1-1.2x).
    """
    return (x.reshape(-1, x.shape[-1]).T @ d_y.reshape(-1, d_y.shape[-1])).T


@jax.custom_vjp
def unembed(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """float32 logits [..., V] = hidden [..., D] @ weight^T for the unembedding weight [V, D].

    The weight gradient is computed by `weight_gradient`, faster on CPU than autodiff's.
    """
    return jnp.einsum("...d,vd->...v", hidden, weight, preferred_element_type=jnp.float32)


def _unembed_forward(hidden, weight):
    return unembed(hidden, weight), (hidden, weight)


def _unembed_backward(residuals, d_logits):
    hidden, weight = residuals
    d_logits = d_logits.astype(hidden.dtype)
    d_hidden = jnp.einsum("...v,vd->...d", d_logits, weight)
    return d_hidden, weight_gradient(hidden, d_logits).astype(weight.dtype)


unembed.defvjp(_unembed_forward, _unembed_backward)


class Attention(nnx.Module):
    """Qwen GQA self-attention: q/k/v projections (+ bias in Qwen2, + q/k RMSNorm in Qwen3),
    RoPE, grouped attention over the (cached) keys, output projection."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        self.dtype = jnp.dtype(c.dtype)
        self.block_size = c.attention_block_size
        self.implementation, self.interpret = c.attention_implementation, c.attention_interpret
        self.q_proj = init_param(rngs, (c.num_attention_heads, c.head_dim, c.hidden_size),
                                 ("heads", "head_dim", "embed"), pd)
        self.k_proj = init_param(rngs, (c.num_key_value_heads, c.head_dim, c.hidden_size),
                                 ("kv_heads", "head_dim", "embed"), pd)
        self.v_proj = init_param(rngs, (c.num_key_value_heads, c.head_dim, c.hidden_size),
                                 ("kv_heads", "head_dim", "embed"), pd)
        self.o_proj = init_param(rngs, (c.hidden_size, c.num_attention_heads, c.head_dim),
                                 ("embed", "heads", "head_dim"), pd)
        if c.attention_bias:
            self.q_bias = logical_param(jnp.zeros((c.num_attention_heads, c.head_dim), pd),
                                        ("heads", "head_dim"))
            self.k_bias = logical_param(jnp.zeros((c.num_key_value_heads, c.head_dim), pd),
                                        ("kv_heads", "head_dim"))
            self.v_bias = logical_param(jnp.zeros((c.num_key_value_heads, c.head_dim), pd),
                                        ("kv_heads", "head_dim"))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, axis="head_dim", param_dtype=pd)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, axis="head_dim", param_dtype=pd)
        else:
            self.q_norm = self.k_norm = None

    def _project(self, x, kernel, bias, norm):
        """x [B, T, D] -> [B, T, heads, head_dim] by a kernel [heads, head_dim, D]."""
        heads, head_dim, _ = kernel.shape
        y = linear(x, kernel[...].reshape(heads * head_dim, -1).astype(self.dtype))
        y = y.reshape(x.shape[:2] + (heads, head_dim))
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return y if norm is None else norm(y)

    def __call__(self, x, cos, sin, attention_mask, cache=None, segment_ids=None):
        """x [B, T, D]; cos/sin [B, T, 1, head_dim]; attention_mask [B, T] (1 = real token):
        each token sees the real tokens of x up to itself (of its own segment, given
        segment_ids int32 [B, T]: packed rows, see `causal_attention`; not with a cache).

        cache: None, or (k_cache, v_cache, cache_mask, slot): this layer's cache (KVCache
        layouts), the cached slots every token sees (bool [B, S]) and the slot where this
        call's T keys/values are written, after attention has read the cache.
        Returns (out [B, T, D], kv): without a cache kv is this call's own (k, v)
        [B, T, KV, head_dim] (to start a cache from), with one the updated (k_cache, v_cache).
        """
        q = apply_rope(self._project(x, self.q_proj, self.q_bias, self.q_norm), cos, sin)
        k = apply_rope(self._project(x, self.k_proj, self.k_bias, self.k_norm), cos, sin)
        v = self._project(x, self.v_proj, self.v_bias, None)
        if cache is None:
            out = causal_attention(q, k, v, attention_mask, self.block_size, self.implementation, self.interpret,
                                   segment_ids)
            new_cache = (k, v)
        else:
            k_cache, v_cache, cache_mask, slot = cache
            out = cached_attention(q, k, v, causal_padding_mask(attention_mask), k_cache.astype(self.dtype),
                                   v_cache.astype(self.dtype), cache_mask)
            new_cache = (write_keys(k_cache, k, slot), write_values(v_cache, v, slot))
        o_proj = self.o_proj[...].reshape(x.shape[-1], -1).astype(self.dtype)  # [D, heads * head_dim]
        out = linear(out.reshape(out.shape[:2] + (-1,)), o_proj)
        return out, new_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(x W_gate^T) * (x W_up^T)), weights [out, in]."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        self.dtype = jnp.dtype(c.dtype)
        self.gate_proj = init_param(rngs, (c.intermediate_size, c.hidden_size), ("mlp", "embed"), pd)
        self.up_proj = init_param(rngs, (c.intermediate_size, c.hidden_size), ("mlp", "embed"), pd)
        self.down_proj = init_param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        return swiglu(x, *(w[...].astype(self.dtype) for w in (self.gate_proj, self.up_proj, self.down_proj)))


@jax.custom_vjp
def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """(silu(x W_gate^T) * (x W_up^T)) W_down^T for x [..., D], W_gate/W_up [F, D], W_down [D, F].

    Its gradient is written by hand (`_swiglu_backward`): autodiff's gets the same values,
    but XLA:CPU then transposes the [tokens, F] activation gradients with the silu
    derivative fused in, and the backward runs about 1.2-1.3x slower.
    """
    return _swiglu_forward(x, w_gate, w_up, w_down)[0]


def _swiglu_forward(x, w_gate, w_up, w_down):
    gate, up = linear(x, w_gate), linear(x, w_up)
    return linear(jax.nn.silu(gate) * up, w_down), (x, gate, up, w_gate, w_up, w_down)


def _swiglu_backward(residuals, d_out):
    """With s = sigmoid(g), a = silu(g) = g s, h = a u and out = h W_down^T:
    dh = d_out W_down, du = dh a, dg = dh u s (1 + g (1 - s)); dx = dg W_gate + du W_up;
    dW_down = d_out^T h, dW_gate = dg^T x, dW_up = du^T x (sums over all leading axes)."""
    x, gate, up, w_gate, w_up, w_down = residuals
    g, u = gate.astype(jnp.float32), up.astype(jnp.float32)
    s = jax.nn.sigmoid(g)
    a = g * s
    dh = (d_out @ w_down).astype(jnp.float32)
    du = (dh * a).astype(x.dtype)
    dg = (dh * u * s * (1 + g * (1 - s))).astype(x.dtype)
    h = (a * u).astype(x.dtype)
    dx = dg @ w_gate + du @ w_up
    return dx, weight_gradient(x, dg), weight_gradient(x, du), weight_gradient(h, d_out)


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, axis="norm",
                                       param_dtype=pd)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                                axis="norm", param_dtype=pd)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, attention_mask, cache=None, segment_ids=None):
        attn_out, cache = self.self_attn(self.input_layernorm(x), cos, sin, attention_mask, cache, segment_ids)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache
