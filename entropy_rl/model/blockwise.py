"""Blockwise causal attention for long sequences: the flash-attention algorithm in plain JAX.

Dense attention (`attention.grouped_attention`) keeps each layer's float32 probabilities
[B, H, T, T] for the backward pass: 32 GiB per layer for one 16k-token sequence of
Qwen3-8B (32 heads). Here the T queries and keys are cut into blocks of `block` tokens. A
query block meets only the key blocks at or before it, with an online softmax (Milakov &
Gimelshein 2018; Dao et al. 2022): per query row, over the key blocks j,

    m_j = max(m_{j-1}, rowmax(s_j)),   l_j = l_{j-1} e^{m_{j-1} - m_j} + rowsum(e^{s_j - m_j}),
    acc_j = acc_{j-1} e^{m_{j-1} - m_j} + e^{s_j - m_j} v_j,   out = acc / l,

so a layer's working memory is O(T * block), the probabilities are never stored, and the
backward pass recomputes them block by block from the saved row logsumexp m + log l. Key
blocks above the diagonal, fully masked, are skipped: about half the T^2 work. In packed
rows (segment ids: contiguous runs, 0 on padding) a query block also skips the key blocks
before the earliest segment start among its queries (over all rows), and the backward the
query blocks after the latest segment end among a key block's keys: a row of short
sequences costs about sum(L_i^2), not T^2.

Arrays are head-major, [B, KV, G, T, D] for the H = KV * G query heads grouped G per kv
head and [B, KV, T, D] for keys and values; block i of a query-side array is read as the
G * block rows [B, KV, G * block, ...] of one matmul.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

NEG_INF = float(jnp.finfo(jnp.float32).min)  # the masked score: finite, so max and exp stay NaN-free


def blockwise_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array,
                               block: int, *, segment_ids: jax.Array | None = None) -> jax.Array:
    """q [B, T, H, D], k/v [B, T, KV, D], key_valid bool [B, T] -> [B, T, H, D].

    Query t attends to key s iff s <= t and key_valid[b, s], which is `grouped_attention`
    with the mask `causal_padding_mask(key_valid)`, scores and softmax in float32; given
    segment_ids int [B, T] (contiguous runs, 0 where not key_valid) also iff s is in t's
    segment. A query that sees no key (a left-padding token) gets zeros and no gradient. T
    is padded inside to a multiple of `block`.
    """
    chex.assert_rank([q, k, v, key_valid], [4, 4, 4, 2])
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    pad = -length % block

    def head_major(x):  # [B, T, KV * G, D] -> [B, KV, G, T + pad, D]
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return x.reshape(batch, length + pad, kv_heads, -1, head_dim).transpose(0, 2, 3, 1, 4)

    key_segments = jnp.pad(key_valid.astype(jnp.int32), ((0, 0), (0, pad)))
    num_blocks = (length + pad) // block
    if segment_ids is None:
        query_segments = jnp.ones_like(key_segments)
        first_key_block = jnp.zeros((num_blocks,), jnp.int32)
        last_query_block = jnp.full((num_blocks,), num_blocks - 1, jnp.int32)
    else:
        key_segments = query_segments = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, pad)))
        first_key_block, last_query_block = segment_block_bounds(key_segments, block)
    out = _blockwise(head_major(q), head_major(k)[:, :, 0], head_major(v)[:, :, 0],
                     (query_segments, key_segments, first_key_block, last_query_block), block)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length + pad, heads, head_dim)[:, :length]


def segment_block_bounds(segments: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """(first_key_block, last_query_block) int32 [n] for segments int32 [B, n * block]
    (contiguous runs, 0 = padding): query block i sees no key block before
    first_key_block[i], key block j is seen by no query block after last_query_block[j]
    (over every row; a block of padding only bounds nothing: i and j themselves)."""
    batch, length = segments.shape
    index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segments.shape)
    boundary = jnp.concatenate([jnp.ones((batch, 1), bool), segments[:, 1:] != segments[:, :-1]], axis=1)
    start = jax.lax.cummax(jnp.where(boundary, index, 0), axis=1)
    last = jnp.concatenate([segments[:, 1:] != segments[:, :-1], jnp.ones((batch, 1), bool)], axis=1)
    end = jax.lax.cummin(jnp.where(last, index, length - 1), axis=1, reverse=True)
    real = segments != 0
    blocks = jnp.arange(length // block, dtype=jnp.int32)
    start_block = jnp.where(real, start // block, length).reshape(batch, -1, block).min(axis=(0, 2))
    end_block = jnp.where(real, end // block, -1).reshape(batch, -1, block).max(axis=(0, 2))
    return jnp.minimum(start_block, blocks), jnp.maximum(end_block, blocks)


def _query_rows(x: jax.Array, i, block: int) -> jax.Array:
    """Block i of a query-side x [B, KV, G, T, ...] as rows [B, KV, G * block, ...]."""
    rows = jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=3)
    return rows.reshape(rows.shape[:2] + (-1,) + rows.shape[4:])


def _key_block(x: jax.Array, j, block: int) -> jax.Array:
    """Block j of a key-side x [B, KV, T, D]: [B, KV, block, D]."""
    return jax.lax.dynamic_slice_in_dim(x, j * block, block, axis=2)


def _unblock(blocks: jax.Array, groups: int) -> jax.Array:
    """Stacked query blocks [n, B, KV, G * block, ...] -> [B, KV, G, n * block, ...]."""
    n, batch, kv_heads, rows = blocks.shape[:4]
    tail = blocks.shape[4:]
    x = blocks.reshape((n, batch, kv_heads, groups, rows // groups) + tail)
    x = jnp.moveaxis(x, 0, 3)
    return x.reshape((batch, kv_heads, groups, -1) + tail)


def _block_mask(segments, i, j, block: int, groups: int) -> jax.Array:
    """bool [B, 1, G * block, block]: which keys of block j the query rows of block i see
    (segments: the (query, key) segment ids [B, T]; a key of segment 0 is seen by none)."""
    query_segments, key_segments = segments[:2]
    query_pos = i * block + jnp.arange(block)
    key_pos = j * block + jnp.arange(block)
    causal = jnp.tile(key_pos[None, :] <= query_pos[:, None], (groups, 1))
    keys = jax.lax.dynamic_slice_in_dim(key_segments, j * block, block, axis=1)
    queries = jnp.tile(jax.lax.dynamic_slice_in_dim(query_segments, i * block, block, axis=1), (1, groups))
    same = (queries[:, :, None] == keys[:, None, :]) & (keys != 0)[:, None, :]
    return causal[None, None] & same[:, None]


def _scores(q_rows: jax.Array, k_block: jax.Array) -> jax.Array:
    """float32 q k^T / sqrt(D): [B, KV, M, D] x [B, KV, S, D] -> [B, KV, M, S]."""
    scores = jnp.einsum("bkmd,bksd->bkms", q_rows, k_block, preferred_element_type=jnp.float32)
    return scores * q_rows.shape[-1] ** -0.5


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise(q, k, v, segments, block):
    """q [B, KV, G, T, D], k/v [B, KV, T, D], T a multiple of block, segments =
    (query_segments, key_segments int32 [B, T], first_key_block, last_query_block int32
    [T / block], see `segment_block_bounds`) -> out [B, KV, G, T, D]."""
    return _blockwise_forward(q, k, v, segments, block)[0]


def _blockwise_forward(q, k, v, segments, block):
    """(out, residuals): the online softmax over key blocks first_key_block[i]..i for each
    query block i; the residuals keep the row logsumexp [B, KV, G, T] (0 for rows that see
    no key)."""
    batch, kv_heads, groups, length, head_dim = q.shape
    rows = groups * block

    def query_block(i):
        q_rows = _query_rows(q, i, block)

        def add_key_block(j, carry):
            running_max, total, acc = carry
            mask = _block_mask(segments, i, j, block, groups)
            scores = jnp.where(mask, _scores(q_rows, _key_block(k, j, block)), NEG_INF)
            new_max = jnp.maximum(running_max, scores.max(-1))
            probs = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
            decay = jnp.exp(running_max - new_max)
            values = jnp.einsum("bkms,bksd->bkmd", probs.astype(v.dtype), _key_block(v, j, block),
                                preferred_element_type=jnp.float32)
            return new_max, total * decay + probs.sum(-1), acc * decay[..., None] + values

        init = (jnp.full((batch, kv_heads, rows), NEG_INF, jnp.float32),
                jnp.zeros((batch, kv_heads, rows), jnp.float32),
                jnp.zeros((batch, kv_heads, rows, head_dim), jnp.float32))
        running_max, total, acc = jax.lax.fori_loop(segments[2][i], i + 1, add_key_block, init)
        seen = total > 0
        safe_total = jnp.where(seen, total, 1.0)
        out = jnp.where(seen[..., None], acc / safe_total[..., None], 0.0)
        return out.astype(q.dtype), jnp.where(seen, running_max + jnp.log(safe_total), 0.0)

    out, logsumexp = jax.lax.map(query_block, jnp.arange(length // block))
    out, logsumexp = _unblock(out, groups), _unblock(logsumexp, groups)
    return out, (q, k, v, segments, out, logsumexp)


def _blockwise_backward(block, residuals, d_out):
    """With p = exp(s - logsumexp) recomputed per block pair (i, j), j <= i:
    dv_j += p^T do_i, dp = do_i v_j^T, ds = p (dp - rowsum(do_i * out_i)) / sqrt(D),
    dk_j += ds^T q_i, dq_i += ds k_j, for i up to last_query_block[j]. A scan over the key
    blocks j carries dq."""
    q, k, v, segments, out, logsumexp = residuals
    batch, kv_heads, groups, length, head_dim = q.shape
    dtype = q.dtype
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)

    def key_block(d_q, j):
        k_j, v_j = _key_block(k, j, block), _key_block(v, j, block)

        def add_query_block(i, carry):
            d_k, d_v, d_q = carry
            q_rows, do_rows = _query_rows(q, i, block), _query_rows(d_out, i, block)
            mask = _block_mask(segments, i, j, block, groups)
            probs = jnp.where(mask, jnp.exp(_scores(q_rows, k_j) - _query_rows(logsumexp, i, block)[..., None]),
                              0.0)
            d_v = d_v + jnp.einsum("bkms,bkmd->bksd", probs.astype(dtype), do_rows,
                                   preferred_element_type=jnp.float32)
            d_probs = jnp.einsum("bkmd,bksd->bkms", do_rows, v_j, preferred_element_type=jnp.float32)
            d_scores = (probs * (d_probs - _query_rows(delta, i, block)[..., None])
                        * head_dim ** -0.5).astype(dtype)
            d_k = d_k + jnp.einsum("bkms,bkmd->bksd", d_scores, q_rows, preferred_element_type=jnp.float32)
            d_q_rows = jnp.einsum("bkms,bksd->bkmd", d_scores, k_j, preferred_element_type=jnp.float32)
            return d_k, d_v, _add_query_rows(d_q, i, block, d_q_rows)

        zeros = jnp.zeros((batch, kv_heads, block, head_dim), jnp.float32)
        d_k, d_v, d_q = jax.lax.fori_loop(j, segments[3][j] + 1, add_query_block, (zeros, zeros, d_q))
        return d_q, (d_k, d_v)

    d_q, (d_k, d_v) = jax.lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(length // block))
    d_k, d_v = (jnp.moveaxis(x, 0, 2).reshape(k.shape) for x in (d_k, d_v))
    return d_q.astype(dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


def _add_query_rows(x: jax.Array, i, block: int, rows: jax.Array) -> jax.Array:
    """x [B, KV, G, T, D] with rows [B, KV, G * block, D] added to its block i."""
    current = jax.lax.dynamic_slice_in_dim(x, i * block, block, axis=3)
    return jax.lax.dynamic_update_slice_in_dim(x, current + rows.reshape(current.shape), i * block, axis=3)


_blockwise.defvjp(_blockwise_forward, _blockwise_backward)
