"""Static-shape selection: masked quantile / top-k / rank against numpy, under jit and vmap,
for any number of valid tokens with a single compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import count_from_ratio, masked_quantile, masked_rank, masked_top_k
from tests.losses.fast_jit import fast_jit

QUANTILES = (0.0, 0.05, 0.5, 0.8, 1.0)


@fast_jit
def quantiles(values, mask):
    return jnp.stack([masked_quantile(values, mask, q) for q in QUANTILES])


@fast_jit
def top_and_bottom(values, mask, k):
    return masked_top_k(values, mask, k), masked_top_k(values, mask, k, largest=False)


def numpy_top_k(values, mask, k, largest=True):
    flat, valid = values.reshape(-1), mask.reshape(-1) > 0
    index = np.flatnonzero(valid)
    order = np.argsort(-flat[index] if largest else flat[index], kind="stable")
    selected = np.zeros(flat.shape, np.float32)
    selected[index[order[:k]]] = 1.0
    return selected.reshape(values.shape)


@pytest.mark.parametrize("num_valid", [1, 2, 7, 40])
def test_quantile_and_top_k_match_numpy_for_any_valid_count(num_valid):
    rng = np.random.default_rng(num_valid)
    values = rng.normal(size=(5, 8)).astype(np.float32)
    mask = np.zeros(40, np.float32)
    mask[rng.choice(40, num_valid, replace=False)] = 1.0
    mask = mask.reshape(5, 8)
    expected = [np.quantile(values[mask > 0], q) for q in QUANTILES]
    np.testing.assert_allclose(quantiles(values, mask), expected, rtol=1e-6, atol=1e-6)
    for k in (0, 1, 3, 45):
        top, bottom = top_and_bottom(values, mask, k)
        np.testing.assert_array_equal(top, numpy_top_k(values, mask, min(k, num_valid)))
        np.testing.assert_array_equal(bottom, numpy_top_k(values, mask, min(k, num_valid), False))
    # Every valid count above ran through one compiled program per function.
    assert quantiles._cache_size() == 1
    assert top_and_bottom._cache_size() == 1


def test_hand_cases_and_empty():
    values = np.array([[4.0, 1.0, 3.0], [2.0, 9.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)  # valid: 4 1 3 2
    np.testing.assert_allclose(quantiles(values, mask), [1.0, 1.15, 2.5, 3.4, 4.0], rtol=1e-6)
    np.testing.assert_array_equal(fast_jit(masked_rank)(values, mask), [[0, 3, 1], [2, 4, 5]])
    np.testing.assert_array_equal(quantiles(values, 0 * mask), 0.0)
    np.testing.assert_array_equal(top_and_bottom(values, 0 * mask, 2)[0], 0.0)


def test_ties_break_by_position():
    values = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(
        top_and_bottom(values, np.ones((2, 3), np.float32), 2)[0], [[1, 1, 0], [0, 0, 0]]
    )


def test_vmap_and_no_gradient():
    values = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5)), jnp.float32)
    mask = jnp.ones((3, 4, 5))
    per_batch = fast_jit(jax.vmap(lambda v, m: masked_quantile(v, m, 0.5)))(values, mask)
    np.testing.assert_allclose(
        per_batch, np.median(np.asarray(values).reshape(3, -1), axis=1), rtol=1e-6
    )
    grad = fast_jit(jax.grad(lambda v: masked_quantile(v, mask[0], 0.3)))(values[0])
    np.testing.assert_array_equal(grad, 0.0)


def test_count_from_ratio_exact_integers():
    counts = fast_jit(
        lambda n: jnp.stack(
            [
                count_from_ratio(n, 0.2, rounding="ceil"),
                count_from_ratio(n, 0.2, rounding="floor"),
                count_from_ratio(n, 2e-4, rounding="floor", minimum=1),
                count_from_ratio(n, 0.8, rounding="floor"),
            ]
        )
    )
    for n in (0, 1, 5, 7, 10, 5000, 12345):
        expected = [min(n, -(-n // 5)), n // 5, (max(1, n // 5000) if n else 0), (4 * n) // 5]
        np.testing.assert_array_equal(counts(n), expected, err_msg=f"n={n}")
    with pytest.raises(ValueError, match="rounding"):
        count_from_ratio(3, 0.5, rounding="round")
    with pytest.raises(ValueError, match="quantile"):
        masked_quantile(jnp.ones(3), jnp.ones(3), 1.5)
