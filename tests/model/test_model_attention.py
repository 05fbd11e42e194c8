"""grouped_attention and cached_attention against a float64 numpy reference."""

import jax
import numpy as np
import pytest

from entropy_rl.model.layers import cached_attention, grouped_attention


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
