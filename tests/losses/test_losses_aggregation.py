"""aggregate / aggregate_terms against numpy for every mode, and exactness under splits."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import AGG_MODES, aggregate, aggregate_terms
from tests.losses.fast_jit import fast_jit


def numpy_aggregate(values, mask, mode, horizon=None):
    values, mask = values.astype(np.float64), mask.astype(np.float64)
    rows = mask.sum(1) > 0
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return (values * mask).sum(1)[rows].mean()
    if mode == "seq-mean-token-mean":
        return ((values * mask).sum(1)[rows] / mask.sum(1)[rows]).mean()
    return (values * mask).sum() / (mask.shape[0] * (horizon or mask.shape[1]))


def random_values(seed=0, batch=6, length=8):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(batch, length)).astype(np.float32)
    mask = (rng.random((batch, length)) > 0.4).astype(np.float32)
    mask[2] = 0.0
    return values, mask


class AggregateTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        values, mask = random_values()
        for mode in AGG_MODES:
            got = self.variant(aggregate, static_argnums=2)(values, mask, mode)
            np.testing.assert_allclose(got, numpy_aggregate(values, mask, mode), rtol=1e-6)
        got = aggregate(values, mask, "seq-mean-token-sum-norm", horizon=100)
        np.testing.assert_allclose(got, numpy_aggregate(values, mask, "x", 100), rtol=1e-6)


def test_hand_computed():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    np.testing.assert_allclose(aggregate(values, mask, "token-mean"), 7 / 3, rtol=1e-6)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-sum"), 3.5, rtol=1e-6)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-mean"), 2.75, rtol=1e-6)
    np.testing.assert_allclose(aggregate(values, mask, "seq-mean-token-sum-norm"), 7 / 6, rtol=1e-6)


def test_row_splits_accumulate_exactly_every_mode():
    values, mask = random_values(1)
    splits = [(0, 1), (1, 4), (4, 6)]

    def accumulated(v, mode):
        terms = [aggregate_terms(v[a:b], mask[a:b], mode, horizon=8) for a, b in splits]
        return sum(t[0] for t in terms) / sum(t[1] for t in terms)

    @fast_jit
    def both(v):
        return {
            mode: (
                jax.value_and_grad(accumulated)(v, mode),
                jax.value_and_grad(lambda x: aggregate(x, mask, mode, horizon=8))(v),
            )
            for mode in AGG_MODES
        }

    for mode, ((value, grad), (expected_value, expected_grad)) in both(values).items():
        np.testing.assert_allclose(value, expected_value, rtol=1e-6, err_msg=mode)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-9, err_msg=mode)


def test_masked_gradient_zero_even_with_nan_padding():
    values, mask = random_values(2)
    values = np.where(mask > 0, values, np.nan).astype(np.float32)
    run = fast_jit(
        lambda v: {
            mode: jax.value_and_grad(lambda x: aggregate(x, mask, mode))(v) for mode in AGG_MODES
        }
    )
    for mode, (value, grad) in run(values).items():
        assert np.isfinite(value), mode
        np.testing.assert_array_equal(grad[mask == 0], 0.0)


def test_empty_batch_is_zero_and_bad_input():
    empty = fast_jit(lambda v, m: aggregate(v, m, "token-mean"))(
        jnp.ones((2, 3)), jnp.zeros((2, 3))
    )
    assert float(empty) == 0.0
    with pytest.raises(ValueError, match="unknown loss aggregation mode"):
        aggregate(jnp.ones((2, 3)), jnp.ones((2, 3)), "mean")
    with pytest.raises(AssertionError):
        aggregate(jnp.ones((6,)), jnp.ones((6,)), "token-mean")
