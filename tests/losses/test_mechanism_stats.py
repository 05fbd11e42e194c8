"""The per-token quantities of the mechanism figures (samples.jsonl `grad_sq`, `cov`):

grad_sq = 1 - 2p + sum_j p_j^2 (STAPO Theorem 3.1, from the streamed collision probability)
against jax.grad of log_softmax(z)[y] and against a float64 central finite difference; the
streamed collision probability against float64 numpy; SENT's selection covariance against a
numpy recomputation over its low-entropy set."""

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl.losses import (
    LossInputs,
    PolicyLossConfig,
    chunked_collision_probability,
    chunked_logprobs_and_entropy,
    logit_grad_norm_sq,
    selection_covariance,
)

TEMPERATURE = 0.7


def _batch(seed=0, tokens=(3, 5), hidden_size=8, vocab=37):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(*tokens, hidden_size)).astype(np.float32)
    unembedding = (1.5 * rng.normal(size=(vocab, hidden_size))).astype(np.float32)
    targets = rng.integers(0, vocab, tokens).astype(np.int32)
    return hidden, unembedding, targets


def _stored_grad_sq(hidden, unembedding, targets):
    """grad_sq as samples.jsonl stores it: logp and sum_j p_j^2 streamed in chunks (11 does not divide V)."""
    logp, _ = chunked_logprobs_and_entropy(hidden, unembedding, targets, chunk_size=11, temperature=TEMPERATURE)
    collision = chunked_collision_probability(hidden, unembedding, chunk_size=11, temperature=TEMPERATURE)
    return np.asarray(logit_grad_norm_sq(logp, collision, jnp.ones_like(logp)), np.float64)


def test_collision_probability_streamed_matches_numpy():
    hidden, unembedding, _ = _batch(1)
    z = hidden.astype(np.float64) @ unembedding.T.astype(np.float64) / TEMPERATURE
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    for chunk in (1, 11, 37, 100):
        got = chunked_collision_probability(hidden, unembedding, chunk_size=chunk, temperature=TEMPERATURE)
        np.testing.assert_allclose(got, (p**2).sum(-1), rtol=2e-5)


def test_grad_sq_equals_autodiff_of_log_softmax():
    hidden, unembedding, targets = _batch(2)
    z = jnp.einsum("btd,vd->btv", hidden, unembedding) / TEMPERATURE
    grad = jax.vmap(jax.vmap(jax.grad(lambda zt, y: jax.nn.log_softmax(zt)[y])))(z, targets)
    np.testing.assert_allclose(_stored_grad_sq(hidden, unembedding, targets),
                               np.sum(np.asarray(grad, np.float64) ** 2, -1), rtol=1e-4, atol=1e-6)


def test_grad_sq_equals_central_finite_difference_float64():
    hidden, unembedding, targets = _batch(3, tokens=(2, 3), vocab=13)
    z = hidden.astype(np.float64) @ unembedding.T.astype(np.float64) / TEMPERATURE

    def log_p(zt, y):
        shifted = zt - zt.max()
        return shifted[y] - np.log(np.exp(shifted).sum())

    step = 1e-6
    expected = np.zeros(targets.shape)
    for index in np.ndindex(targets.shape):
        basis = np.eye(z.shape[-1]) * step
        grad = [(log_p(z[index] + e, targets[index]) - log_p(z[index] - e, targets[index])) / (2 * step)
                for e in basis]
        expected[index] = np.sum(np.square(grad))
    np.testing.assert_allclose(_stored_grad_sq(hidden, unembedding, targets), expected, rtol=1e-4, atol=1e-6)


def test_sent_selection_covariance_is_centred_over_its_low_entropy_set():
    rng = np.random.default_rng(4)
    logp, entropy = -rng.gamma(1.0, size=(2, 4, 6)).astype(np.float32)
    advantages = np.repeat(rng.normal(size=(4, 1)), 6, axis=1).astype(np.float32)
    mask = (rng.random((4, 6)) > 0.3).astype(np.float32)
    inputs = LossInputs(logp=logp, old_logp=logp, advantages=advantages, mask=mask, entropy=-entropy)
    config = PolicyLossConfig(sent_low_entropy_ratio=0.25)
    valid = np.flatnonzero(mask.reshape(-1))
    low = valid[np.argsort(-entropy.reshape(-1)[valid], kind="stable")[:int(np.floor(0.25 * len(valid)))]]
    in_low = np.zeros(mask.size, bool)
    in_low[low] = True
    lp, adv = logp.reshape(-1).astype(np.float64), advantages.reshape(-1).astype(np.float64)
    expected = np.where(in_low, (lp - lp[in_low].mean()) * (adv - adv[in_low].mean()), 0.0).reshape(mask.shape)
    np.testing.assert_allclose(selection_covariance("sent", inputs, config), expected, rtol=1e-5, atol=1e-6)
    everywhere = np.where(mask > 0, (logp - logp[mask > 0].mean()) * (advantages - advantages[mask > 0].mean()), 0)
    np.testing.assert_allclose(selection_covariance("kl_cov", inputs, config), everywhere, rtol=1e-5, atol=1e-6)
