"""Token statistics against float64 numpy, STAPO's gradient-norm identity against autodiff,
extreme / bf16 logits, and the chunked path against the full one (V = 151,936 included)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import (
    centered_covariance,
    chunked_logprobs_and_entropy,
    collision_probability,
    logit_grad_norm_sq,
    logit_grad_norm_sq_bounds,
    logprobs_and_entropy,
)
from tests.losses.fast_jit import fast_jit

QWEN_VOCAB = 151_936


def numpy_stats(logits, targets, temperature=1.0):
    z = logits.astype(np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    logp = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    probs = np.exp(log_probs)
    return logp, -(probs * log_probs).sum(-1), (probs**2).sum(-1)


def random_logits(seed, shape=(3, 4, 50), scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.normal(size=shape)).astype(np.float32)
    return logits, rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)


class LogprobsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy(self):
        logits, targets = random_logits(0)
        for temperature in (1.0, 0.7):
            fn = self.variant(functools.partial(logprobs_and_entropy, temperature=temperature))
            logp, entropy = fn(logits, targets)
            expected_logp, expected_entropy, _ = numpy_stats(logits, targets, temperature)
            np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-5, atol=1e-5)


def test_uniform_and_one_hot_by_hand():
    logp, entropy = fast_jit(logprobs_and_entropy)(jnp.zeros((2, 8)), jnp.array([0, 5]))
    np.testing.assert_allclose(logp, -np.log(8), rtol=1e-6)
    np.testing.assert_allclose(entropy, np.log(8), rtol=1e-6)


def test_extreme_and_bf16_logits_are_finite_float32():
    logits = np.array([[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, 1e4]], np.float32)
    targets = np.array([1, 3], np.int32)
    stats = fast_jit(
        jax.value_and_grad(lambda z: sum(jnp.sum(x) for x in logprobs_and_entropy(z, targets)))
    )
    for dtype in (jnp.float32, jnp.bfloat16):
        logp, entropy = fast_jit(logprobs_and_entropy)(jnp.asarray(logits, dtype), targets)
        assert logp.dtype == entropy.dtype == jnp.float32
        big = float(jnp.asarray(1e4, dtype))  # 9984 in bfloat16
        np.testing.assert_allclose(logp, [-2 * big - np.log(2), 0.0], rtol=1e-6)
        np.testing.assert_allclose(entropy, [np.log(2), 0.0], atol=1e-6)
        value, grad = stats(jnp.asarray(logits, dtype))
        assert np.isfinite(value) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    bf16_logits, bf16_targets = random_logits(1)
    logp, entropy = fast_jit(logprobs_and_entropy)(
        jnp.asarray(bf16_logits, jnp.bfloat16), bf16_targets
    )
    expected_logp, expected_entropy, _ = numpy_stats(
        np.asarray(jnp.asarray(bf16_logits, jnp.bfloat16), np.float32), bf16_targets
    )
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-5, atol=1e-5)


def test_gradient_norm_identity_and_bounds():
    logits, targets = random_logits(2, shape=(6, 40))
    advantages = np.random.default_rng(3).normal(size=6).astype(np.float32)
    logp, entropy = fast_jit(logprobs_and_entropy)(logits, targets)
    collision = fast_jit(collision_probability)(logits)
    np.testing.assert_allclose(collision, numpy_stats(logits, targets)[2], rtol=1e-5)
    # Independent: the autodiff gradient of -A logp w.r.t. the logits.
    per_token_grad = fast_jit(
        jax.vmap(jax.grad(lambda z, y, a: -a * logprobs_and_entropy(z, y)[0]))
    )(logits, targets, advantages)
    autodiff_norm_sq = np.sum(np.asarray(per_token_grad, np.float64) ** 2, axis=-1)
    norm_sq = logit_grad_norm_sq(logp, collision, advantages)
    np.testing.assert_allclose(norm_sq, autodiff_norm_sq, rtol=1e-4, atol=1e-6)
    lower, upper = logit_grad_norm_sq_bounds(logp, entropy, advantages, vocab_size=40)
    assert np.all(lower <= norm_sq * (1 + 1e-5)) and np.all(norm_sq <= upper * (1 + 1e-5))


def test_centered_covariance_matches_numpy():
    rng = np.random.default_rng(4)
    logp, adv = rng.normal(size=(2, 3, 5)).astype(np.float32)
    mask = (rng.random((3, 5)) > 0.4).astype(np.float32)
    valid = mask > 0
    expected = np.where(valid, (logp - logp[valid].mean()) * (adv - adv[valid].mean()), 0.0)
    np.testing.assert_allclose(
        fast_jit(centered_covariance)(logp, adv, mask), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(centered_covariance(logp, adv, 0 * mask), 0.0)
    # Hand case: logp (1, 3), A (0, 2): means 2, 1 -> cov (1, 1).
    np.testing.assert_allclose(
        centered_covariance(jnp.array([1.0, 3.0]), jnp.array([0.0, 2.0]), jnp.ones(2)), [1, 1]
    )


def _stats_and_grads(fn, hidden, unembedding, weights):
    """Both statistics and the gradient of sum(w0 logp + w1 H) w.r.t. hidden, unembedding."""

    def objective(h, w):
        logp, entropy = fn(h, w)
        return jnp.sum(weights[0] * logp + weights[1] * entropy), (logp, entropy)

    (_, stats), grads = fast_jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(
        hidden, unembedding
    )
    return stats, grads


def _assert_chunked_matches_full(hidden, unembedding, targets, chunk_size, temperature, rtol=1e-5):
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(2,) + targets.shape).astype(np.float32)
    def full(h, w):
        return logprobs_and_entropy(
            jnp.einsum("...d,vd->...v", h, w), targets, temperature=temperature
        )
    def chunked(h, w):
        return chunked_logprobs_and_entropy(
            h, w, targets, chunk_size=chunk_size, temperature=temperature
        )
    (stats, grads), (expected_stats, expected_grads) = (
        _stats_and_grads(chunked, hidden, unembedding, weights),
        _stats_and_grads(full, hidden, unembedding, weights),
    )
    for got, expected in zip(stats + grads, expected_stats + expected_grads):
        got, expected = np.asarray(got, np.float32), np.asarray(expected, np.float32)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("chunk_size,temperature", [(16, 1.0), (7, 0.6), (64, 1.3)])
def test_chunked_matches_full_small(chunk_size, temperature):
    rng = np.random.default_rng(chunk_size)
    hidden = rng.normal(size=(2, 3, 8)).astype(np.float32)
    unembedding = rng.normal(size=(50, 8)).astype(np.float32)
    targets = rng.integers(0, 50, (2, 3)).astype(np.int32)
    _assert_chunked_matches_full(hidden, unembedding, targets, chunk_size, temperature)


def test_chunked_matches_full_at_qwen_vocab():
    rng = np.random.default_rng(6)
    hidden = rng.normal(size=(12, 16)).astype(np.float32)
    unembedding = (0.5 * rng.normal(size=(QWEN_VOCAB, 16))).astype(np.float32)
    targets = rng.integers(0, QWEN_VOCAB, 12).astype(np.int32)
    targets[:2] = [0, QWEN_VOCAB - 1]  # first and last vocabulary entries
    _assert_chunked_matches_full(hidden, unembedding, targets, chunk_size=16384, temperature=1.0)


def test_chunked_bf16_gives_float32_and_matching_values():
    rng = np.random.default_rng(7)
    hidden = jnp.asarray(rng.normal(size=(4, 8)), jnp.bfloat16)
    unembedding = jnp.asarray(rng.normal(size=(30, 8)), jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, 30, 4), jnp.int32)
    logp, entropy = fast_jit(functools.partial(chunked_logprobs_and_entropy, chunk_size=8))(
        hidden, unembedding, targets
    )
    assert logp.dtype == entropy.dtype == jnp.float32
    logits = np.asarray(hidden, np.float32) @ np.asarray(unembedding, np.float32).T
    expected_logp, expected_entropy, _ = numpy_stats(logits, np.asarray(targets))
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, expected_entropy, rtol=1e-5, atol=1e-5)
    grads = fast_jit(
        jax.grad(
            lambda h, w: jnp.sum(chunked_logprobs_and_entropy(h, w, targets, chunk_size=8)[1]),
            argnums=(0, 1),
        )
    )(hidden, unembedding)
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16


def test_chunked_bad_input():
    hidden, unembedding = jnp.zeros((3, 8)), jnp.zeros((20, 8))
    with pytest.raises(ValueError, match="hidden size"):
        chunked_logprobs_and_entropy(
            hidden, jnp.zeros((20, 4)), jnp.zeros(3, jnp.int32), chunk_size=4
        )
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs_and_entropy(hidden, unembedding, jnp.zeros(3, jnp.int32), chunk_size=0)
    with pytest.raises(AssertionError):
        chunked_logprobs_and_entropy(
            hidden, unembedding, jnp.zeros((3, 1), jnp.int32), chunk_size=4
        )
    with pytest.raises(AssertionError):
        logprobs_and_entropy(jnp.zeros((3, 8)), jnp.zeros(3, jnp.float32))
