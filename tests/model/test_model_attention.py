"""grouped_attention, blockwise_causal_attention and cached_attention against a float64
numpy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.model.blockwise import blockwise_causal_attention
from entropy_rl.model import layers
from entropy_rl.model.layers import cached_attention, causal_padding_mask, grouped_attention


def reference_attention(q, k, v, mask):
    """q [B, T, H, D], k/v [B, S, KV, D] (kv heads repeated), mask [B, T, S]; float64;
    fully masked rows get uniform weights."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(mask[:, None], scores, -1e30)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", probs, v)


def random_case(rng, batch=3, length=4, slots=7, heads=4, kv_heads=2, head_dim=8):
    q = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(batch, length, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    k_cache, v_cache = (rng.normal(size=(batch, slots, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    real = rng.random((batch, length)) < 0.8
    mask = np.tril(np.ones((length, length), bool))[None] & real[:, None, :]
    cache_mask = rng.random((batch, slots)) < 0.6
    cache_mask[0] = False  # a row with nothing cached
    return q, k, v, mask, k_cache, v_cache, cache_mask


def test_grouped_attention_matches_reference_with_masked_rows():
    rng = np.random.default_rng(0)
    q, k, v, mask, *_ = random_case(rng)
    mask[1, 0] = False  # a fully masked query row: uniform weights, no NaN
    out = jax.jit(grouped_attention)(q, k, v, mask)
    np.testing.assert_allclose(out, reference_attention(q, k, v, mask), atol=1e-5)


@pytest.mark.parametrize("length", [1, 4])
@pytest.mark.slow
def test_cached_attention_equals_attention_over_cache_then_new_tokens(length):
    rng = np.random.default_rng(length)
    q, k, v, mask, k_cache, v_cache, cache_mask = random_case(rng, length=length)
    mask[2, -1, -1] = False  # the last query does not see itself (a padding token)
    # The cache layouts: keys [B, KV, D, S], values [B, KV, S, D].
    keys_cache, values_cache = k_cache.transpose(0, 2, 3, 1), v_cache.transpose(0, 2, 1, 3)
    out = jax.jit(cached_attention)(q, k, v, mask, keys_cache, values_cache, cache_mask)
    full_mask = np.concatenate([np.broadcast_to(cache_mask[:, None], (3, length, 7)), mask], axis=-1)
    expected = reference_attention(q, np.concatenate([k_cache, k], 1), np.concatenate([v_cache, v], 1), full_mask)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    grads = jax.grad(lambda q: cached_attention(q, k, v, mask, keys_cache, values_cache, cache_mask).sum())(q)
    assert np.isfinite(grads).all()



def decode_case(rng, slots, batch=3, kv_heads=2, groups=2, head_dim=8):
    """A decode step's q [B, KV, G, D], own k/v [B, KV, D] and caches k [B, KV, D, S],
    v [B, KV, S, D] (random float32) with no slot valid yet."""
    q = rng.normal(size=(batch, kv_heads, groups, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(batch, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    k_cache = rng.normal(size=(batch, kv_heads, head_dim, slots)).astype(np.float32)
    v_cache = rng.normal(size=(batch, kv_heads, slots, head_dim)).astype(np.float32)
    return q, k, v, k_cache, v_cache, np.zeros((batch, slots), bool)


@pytest.mark.parametrize("row_slots", [7, 13])  # in 1 chunk (read with no loop alone), in 2
@pytest.mark.parametrize("platform", ["cpu", "tpu"])  # the elementwise form, the dots' form
def test_decode_attention_chunks_no_row_sees_leave_a_row_bitwise_unchanged(platform, row_slots, monkeypatch):
    """A row's output from the cache read in chunks of 8 slots: the same bits with its own
    chunks only as with 40 slots (the chunks after its own, which no row sees, not read) and
    with 40 next to rows that see 37 slots (all 5 chunks read, its own last ones masked),
    and the float64 reference's value; a cache of 20 slots (a shorter last chunk) matches
    the reference."""
    monkeypatch.setattr(layers, "traced_platform", lambda: platform)
    attend = jax.jit(functools.partial(layers._single_query_attention, chunk_slots=8))
    rng = np.random.default_rng(row_slots)
    sees_itself = np.array([True, True, False])
    q, k, v, k_cache, v_cache, cache_mask = decode_case(rng, slots=40)
    cache_mask[0, :row_slots] = rng.random(row_slots) < 0.7
    cache_mask[1:, :37] = True  # longer rows
    alone = [attend(q[:1], k[:1], v[:1], sees_itself[:1], k_cache[:1, ..., :slots], v_cache[:1, :, :slots],
                    cache_mask[:1, :slots])[0] for slots in (-(-row_slots // 8) * 8, 40)]
    together = attend(q, k, v, sees_itself, k_cache, v_cache, cache_mask)
    for out in alone:
        np.testing.assert_array_equal(out, together[0])
    np.testing.assert_allclose(together, reference_decode_attention(q, k, v, sees_itself, k_cache, v_cache,
                                                                    cache_mask), atol=1e-6)
    short = k_cache[..., :20], v_cache[:, :, :20], cache_mask[:, :20]
    np.testing.assert_allclose(attend(q, k, v, sees_itself, *short),
                               reference_decode_attention(q, k, v, sees_itself, *short), atol=1e-6)


def reference_decode_attention(q, k, v, sees_itself, k_cache, v_cache, cache_mask):
    """`reference_attention` of the query over the cached keys and then its own, in the
    decode layouts."""
    batch, kv_heads, groups, head_dim = q.shape
    keys = np.concatenate([k_cache.transpose(0, 3, 1, 2), k[:, None]], axis=1)
    values = np.concatenate([v_cache.transpose(0, 2, 1, 3), v[:, None]], axis=1)
    mask = np.concatenate([cache_mask, sees_itself[:, None]], axis=1)[:, None]
    out = reference_attention(q.reshape(batch, 1, kv_heads * groups, head_dim), keys, values, mask)
    return out.reshape(q.shape)

def padded_case(rng, batch=3, length=21, heads=4, kv_heads=2, head_dim=8):
    """q/k/v and a real-token mask [B, T] with left padding, right padding and a hole."""
    q = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
    k, v = (rng.normal(size=(batch, length, kv_heads, head_dim)).astype(np.float32) for _ in range(2))
    real = np.ones((batch, length), bool)
    real[0, :5] = False
    real[1, 15:] = False
    real[2, 8:10] = False
    return q, k, v, real


@pytest.mark.parametrize("block", [4, 7, 16, 32])
@pytest.mark.slow
def test_blockwise_attention_matches_reference_and_dense_gradients(block):
    """Block sizes that divide T = 21 or not, one block covering it all, G = 2 query heads
    per kv head. Queries that see no key (row 0's left padding) get zeros and no gradient."""
    rng = np.random.default_rng(block)
    q, k, v, real = padded_case(rng)
    mask = np.asarray(causal_padding_mask(real))
    sees = mask.any(-1)[..., None, None]
    assert not sees.all()
    blockwise = jax.jit(lambda q, k, v: blockwise_causal_attention(q, k, v, real, block))
    out = blockwise(q, k, v)
    np.testing.assert_allclose(out, np.where(sees, reference_attention(q, k, v, mask), 0.0), atol=1e-5)

    weights = rng.normal(size=q.shape).astype(np.float32)
    def loss(attend, weights):
        return lambda q, k, v: jnp.sum(attend(q, k, v) * weights)
    grads = jax.jit(jax.grad(loss(blockwise, weights), argnums=(0, 1, 2)))(q, k, v)
    dense = jax.grad(loss(lambda q, k, v: grouped_attention(q, k, v, mask), weights * sees), argnums=(0, 1, 2))
    for got, expected in zip(grads, dense(q, k, v)):
        np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(grads[0])[~sees[..., 0, 0]], 0.0)


def test_blockwise_attention_in_bfloat16_follows_float32():
    rng = np.random.default_rng(1)
    q, k, v, real = padded_case(rng)
    sees = np.asarray(causal_padding_mask(real)).any(-1)[..., None, None]
    exact = blockwise_causal_attention(q, k, v, real, 8)
    low = blockwise_causal_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), real, 8)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.where(sees, low.astype(np.float32), 0), exact, atol=5e-2)


def test_blockwise_attention_memory_grows_linearly_in_length():
    """Compiled temporary memory of forward+backward: dense attention keeps [B, H, T, T]
    probabilities, the blockwise one O(T * block) floats."""
    def temp_bytes(attend, length):
        q = jax.ShapeDtypeStruct((1, length, 2, 8), jnp.float32)
        kv = jax.ShapeDtypeStruct((1, length, 1, 8), jnp.float32)
        real = jnp.ones((1, length), bool)
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, real)), argnums=(0, 1, 2)))
        return grad.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes

    def dense(q, k, v, real):
        return grouped_attention(q, k, v, causal_padding_mask(real))

    def blockwise(q, k, v, real):
        return blockwise_causal_attention(q, k, v, real, 128)

    dense_1k, dense_2k = temp_bytes(dense, 1024), temp_bytes(dense, 2048)
    blockwise_1k, blockwise_2k = temp_bytes(blockwise, 1024), temp_bytes(blockwise, 2048)
    # Measured: dense 25 -> 67 MB, blockwise 0.60 -> 0.77 MB.
    assert dense_2k > 2.5 * dense_1k
    assert blockwise_2k < 1.5 * blockwise_1k
    assert blockwise_2k < dense_2k / 50
