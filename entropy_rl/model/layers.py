"""Building blocks of the Qwen decoder: parameters with logical axes, RMSNorm, RoPE,
grouped-query attention and the SwiGLU MLP.

Parameter layouts are chosen for sharding by name (see entropy_rl.parallel): projections
keep heads as their own axis, e.g. q_proj [embed, heads, head_dim], o_proj
[heads, head_dim, embed]; the embedding and lm_head are [vocab, embed] like transformers.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = float(jnp.finfo(jnp.float32).min)


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


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) + mask) v without repeating the kv heads.

    q [B, T, H, D], k/v [B, S, KV, D], mask bool [B, T, S] -> [B, T, H, D]. The H = KV * G
    query heads are grouped G per kv head; scores and softmax are float32. Fully masked
    rows (padding queries) get uniform weights instead of NaN.
    """
    chex.assert_rank([q, k, v, mask], [4, 4, 4, 3])
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores * head_dim ** -0.5, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(batch, length, heads, head_dim)


def cached_attention(q, k, v, mask, k_cache, v_cache, cache_mask) -> jax.Array:
    """Attention of T new queries over the cached slots and the T new tokens.

    q [B, T, H, D]; k/v [B, T, KV, D] (the new tokens); mask bool [B, T, T] (which new
    tokens each query sees); k_cache/v_cache [B, S, KV, D]; cache_mask bool [B, S] (the
    cached slots every query sees) -> [B, T, H, D]. Equals `grouped_attention` over the
    keys concat(cache, new) with the mask concat(cache_mask, mask); the cache is only read,
    so the caller can then write the new tokens into it in place.

    A single query (a decode step) takes `_single_query_attention`, which never copies the
    cache; concatenating would copy it every step, and as a batched matmul the scores are
    B * KV products of [G, D] x [D, S], too small for the matmul kernels (about 5x slower
    on CPU for a 168M model).
    """
    chex.assert_rank([q, k, v, mask, k_cache, v_cache, cache_mask], [4, 4, 4, 3, 4, 4, 2])
    batch, length, heads, head_dim = q.shape
    if length > 1:
        keys = jnp.concatenate([k_cache, k], axis=1)
        values = jnp.concatenate([v_cache, v], axis=1)
        seen_slots = jnp.broadcast_to(cache_mask[:, None, :], (batch, length, cache_mask.shape[1]))
        return grouped_attention(q, keys, values, jnp.concatenate([seen_slots, mask], axis=-1))
    kv_heads = k.shape[2]
    q = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = _single_query_attention(q, k[:, 0], v[:, 0], mask[:, 0, 0], k_cache, v_cache, cache_mask)
    return out.reshape(batch, 1, heads, head_dim)


def _single_query_attention(q, k, v, sees_itself, k_cache, v_cache, cache_mask) -> jax.Array:
    """One query per row: q [B, KV, G, D]; its own k/v [B, KV, D], sees_itself bool [B];
    k_cache/v_cache [B, S, KV, D], cache_mask bool [B, S] -> [B, KV, G, D].

    scores[b, s, k, g] = sum_d q[b, k, g, d] keys[b, s, k, d] / sqrt(D) over the S cached
    keys and then its own (float32), softmax over s, out = sum_s probs[b, s, k, g] values[b, s, k, d].
    Written as elementwise products reduced over d and s, which XLA fuses into one pass
    over the cache.
    """
    scale = q.shape[-1] ** -0.5
    qf = q.astype(jnp.float32)
    cached = jnp.sum(qf[:, None] * k_cache[:, :, :, None].astype(jnp.float32), axis=-1) * scale
    cached = jnp.where(cache_mask[:, :, None, None], cached, NEG_INF)
    own = jnp.sum(qf * k[:, :, None].astype(jnp.float32), axis=-1) * scale
    own = jnp.where(sees_itself[:, None, None], own, NEG_INF)
    probs = jax.nn.softmax(jnp.concatenate([cached, own[:, None]], axis=1), axis=1).astype(v.dtype)
    from_cache = jnp.sum(probs[:, :-1, :, :, None] * v_cache[:, :, :, None], axis=1)
    return from_cache + probs[:, -1, :, :, None] * v[:, :, None]


class Attention(nnx.Module):
    """Qwen GQA self-attention: q/k/v projections (+ bias in Qwen2, + q/k RMSNorm in Qwen3),
    RoPE, grouped attention over the (cached) keys, output projection."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        self.dtype = jnp.dtype(c.dtype)
        self.q_proj = init_param(rngs, (c.hidden_size, c.num_attention_heads, c.head_dim),
                                 ("embed", "heads", "head_dim"), pd)
        self.k_proj = init_param(rngs, (c.hidden_size, c.num_key_value_heads, c.head_dim),
                                 ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = init_param(rngs, (c.hidden_size, c.num_key_value_heads, c.head_dim),
                                 ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = init_param(rngs, (c.num_attention_heads, c.head_dim, c.hidden_size),
                                 ("heads", "head_dim", "embed"), pd)
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
        y = jnp.einsum("btd,dhk->bthk", x, kernel[...].astype(self.dtype))
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return y if norm is None else norm(y)

    def __call__(self, x, cos, sin, mask, cache=None):
        """x [B, T, D]; cos/sin [B, T, 1, head_dim]; mask bool [B, T, T] among x's tokens.

        cache: None, or (k_cache, v_cache, cache_mask, slot): this layer's cache
        [B, S, KV, head_dim], the cached slots every token sees (bool [B, S]) and the slot
        where this call's T keys/values are written, after attention has read the cache.
        Returns (out [B, T, D], kv): without a cache kv is this call's own (k, v)
        [B, T, KV, head_dim] (to start a cache from), with one the updated (k_cache, v_cache).
        """
        q = apply_rope(self._project(x, self.q_proj, self.q_bias, self.q_norm), cos, sin)
        k = apply_rope(self._project(x, self.k_proj, self.k_bias, self.k_norm), cos, sin)
        v = self._project(x, self.v_proj, self.v_bias, None)
        if cache is None:
            out, new_cache = grouped_attention(q, k, v, mask), (k, v)
        else:
            k_cache, v_cache, cache_mask, slot = cache
            out = cached_attention(q, k, v, mask, k_cache.astype(self.dtype),
                                   v_cache.astype(self.dtype), cache_mask)
            start = (0, slot, 0, 0)
            new_cache = (jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start),
                         jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start))
        out = jnp.einsum("bthk,hkd->btd", out, self.o_proj[...].astype(self.dtype))
        return out, new_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(x W_gate) * (x W_up))."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        c = config
        pd = jnp.dtype(c.param_dtype)
        self.dtype = jnp.dtype(c.dtype)
        self.gate_proj = init_param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
        self.up_proj = init_param(rngs, (c.hidden_size, c.intermediate_size), ("embed", "mlp"), pd)
        self.down_proj = init_param(rngs, (c.intermediate_size, c.hidden_size), ("mlp", "embed"), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = x @ self.gate_proj[...].astype(self.dtype)
        up = x @ self.up_proj[...].astype(self.dtype)
        return (jax.nn.silu(gate) * up) @ self.down_proj[...].astype(self.dtype)


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

    def __call__(self, x, cos, sin, mask, cache=None):
        attn_out, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache
