"""kl_estimate against numpy, hand values, clamping and bad kinds."""

import chex
import jax
import numpy as np
import pytest

from entropy_rl.losses import kl_estimate
from tests.losses.fast_jit import fast_jit


def numpy_kl(logp, ref_logp, kind):
    x = ref_logp.astype(np.float64) - logp
    return {
        "k1": -x,
        "abs": np.abs(x),
        "k2": 0.5 * x**2,
        "k3": np.clip(np.exp(np.clip(x, -20, 20)) - np.clip(x, -20, 20) - 1, -10, 10),
    }[kind]


class KlTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        rng = np.random.default_rng(0)
        logp = rng.normal(size=(4, 9)).astype(np.float32) - 1
        ref = logp + rng.normal(size=(4, 9)).astype(np.float32)
        for kind in ("k1", "abs", "k2", "k3"):
            got = self.variant(kl_estimate, static_argnums=2)(logp, ref, kind)
            np.testing.assert_allclose(got, numpy_kl(logp, ref, kind), rtol=1e-5, atol=1e-6)
            self.assertEqual(got.dtype, np.float32)


def test_hand_values_and_alias():
    # x = ref - logp = log 2: k1 = -log 2, k2 = 0.5 log^2 2, k3 = 2 - log 2 - 1.
    logp, ref = np.zeros(1, np.float32), np.log(np.full(1, 2.0, np.float32))
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), -np.log(2), rtol=1e-6)
    np.testing.assert_allclose(kl_estimate(logp, ref, "abs"), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k2"), 0.5 * np.log(2) ** 2, rtol=1e-6)
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3"), 1 - np.log(2), rtol=1e-6)
    np.testing.assert_array_equal(
        kl_estimate(logp, ref, "low_var_kl"), kl_estimate(logp, ref, "k3")
    )
    np.testing.assert_array_equal(kl_estimate(ref, ref, "k3"), 0.0)


def test_k3_clamped_and_finite_gradient():
    logp = np.array([-100.0, 0.0], np.float32)
    ref = np.array([0.0, -100.0], np.float32)
    value = kl_estimate(logp, ref, "k3")
    np.testing.assert_allclose(value, [10.0, 10.0])  # exp(20) and 99 are both clamped
    grad = fast_jit(jax.grad(lambda lp: kl_estimate(lp, ref, "k3").sum()))(logp)
    assert np.all(np.isfinite(grad))


def test_unknown_kind_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(np.zeros(3), np.zeros(3), "k4")
    with pytest.raises(AssertionError):
        kl_estimate(np.zeros(3), np.zeros(4), "k1")
