"""The sampling transform: exact token removal (vs numpy and transformers' warpers),
sampled frequencies (chi-square, within and across the sampler's blocks), returned
log-probs, greedy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from entropy_rl.rollout import filter_logits, sample_tokens, sampling_logprobs
from entropy_rl.rollout.sampling import SAMPLING_BLOCK, _two_level_inverse_cdf


def _reference_kept(z: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Tokens kept, by the definitions: the top_k largest, then the smallest most-likely set
    with probability >= top_p. z has distinct values. Returns bool [V]."""
    order = np.argsort(-z)
    if top_k:
        order = order[:top_k]
    probs = np.exp(z[order] / temperature - np.max(z[order] / temperature))
    probs /= probs.sum()
    size = 1
    while probs[:size].sum() < top_p and size < len(order):
        size += 1
    kept = np.zeros(z.shape, bool)
    kept[order[:size]] = True
    return kept


def _hf_kept(z: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    scores = torch.tensor(z[None], dtype=torch.float32)
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    for warper in warpers:
        scores = warper(None, scores)
    return np.isfinite(scores[0].numpy())


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 12, 0.6), (1.0, 0, 0.3), (0.5, 3, 0.999)]
)
def test_filters_remove_exactly_the_right_tokens(temperature, top_k, top_p, use_jit):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 40)).astype(np.float32) * 2.0
    fn = functools.partial(filter_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    filtered = np.asarray((jax.jit(fn) if use_jit else fn)(jnp.asarray(z)))
    for row in range(z.shape[0]):
        kept = np.isfinite(filtered[row])
        np.testing.assert_array_equal(kept, _reference_kept(z[row], temperature, top_k, top_p))
        np.testing.assert_array_equal(kept, _hf_kept(z[row], temperature, top_k, top_p))
        np.testing.assert_allclose(filtered[row][kept], z[row][kept] / temperature, rtol=1e-6)


def test_top_k_keeps_ties_and_top_p_keeps_at_least_one():
    z = jnp.asarray([[3.0, 1.0, 3.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(z, temperature=1.0, top_k=1)), [[1, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(filter_logits(z, temperature=1.0, top_p=0.01))[1], [1, 0, 0, 0])


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.5, 0, 1.0), (1.0, 6, 0.8)])
def test_sampled_frequencies_match_the_sampling_distribution(temperature, top_k, top_p):
    z = np.random.default_rng(1).normal(size=10).astype(np.float32)
    kept = _reference_kept(z, temperature, top_k, top_p)
    expected = np.where(kept, np.exp(z.astype(np.float64) / temperature), 0.0)
    expected /= expected.sum()
    num = 20000
    keys = jax.random.split(jax.random.key(7), num)
    tokens, logprobs = jax.jit(functools.partial(sample_tokens, temperature=temperature, top_k=top_k, top_p=top_p))(
        jnp.broadcast_to(jnp.asarray(z), (num, 10)), keys
    )
    counts = np.bincount(np.asarray(tokens), minlength=10)
    assert counts[~kept].sum() == 0
    p_value = scipy.stats.chisquare(counts[kept], num * expected[kept]).pvalue
    assert p_value > 1e-3, (counts, num * expected)
    np.testing.assert_allclose(np.asarray(logprobs), np.log(expected[np.asarray(tokens)]), atol=1e-5)


@pytest.mark.slow
def test_rows_with_their_own_keys_do_not_depend_on_other_rows():
    z = jax.random.normal(jax.random.key(0), (4, 50))
    keys = jax.random.split(jax.random.key(3), 4)
    tokens, _ = sample_tokens(z, keys, temperature=1.0)
    tokens_row_2, _ = sample_tokens(z[2:3], keys[2:3], temperature=1.0)
    assert int(tokens[2]) == int(tokens_row_2[0])


def test_greedy_is_argmax_with_logprob_zero():
    z = jax.random.normal(jax.random.key(0), (5, 30))
    tokens, logprobs = sample_tokens(z, jax.random.split(jax.random.key(1), 5), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(np.asarray(z), axis=-1))
    np.testing.assert_array_equal(np.asarray(logprobs), 0.0)
    np.testing.assert_array_equal(np.asarray(sampling_logprobs(z, tokens, temperature=0.0)), 0.0)
    others = (tokens + 1) % 30
    assert np.all(np.isneginf(np.asarray(sampling_logprobs(z, others, temperature=0.0))))


def test_sampling_logprobs_is_log_softmax_of_the_kept_tokens():
    z = np.random.default_rng(2).normal(size=(2, 3, 20)).astype(np.float32)
    tokens = np.argsort(-z, axis=-1)[..., 1]  # second most likely: kept by top_k=4
    got = np.asarray(sampling_logprobs(jnp.asarray(z), jnp.asarray(tokens), temperature=0.5, top_k=4))
    top4 = np.sort(z, axis=-1)[..., -4:] / 0.5
    second = np.take_along_axis(z, tokens[..., None], -1)[..., 0] / 0.5
    np.testing.assert_allclose(got, second - scipy.special.logsumexp(top4, axis=-1), atol=1e-5)


def test_sampled_frequencies_match_over_several_sampling_blocks():
    vocab = 2 * SAMPLING_BLOCK + 100  # two full blocks and a padded one
    z = 2.0 * np.random.default_rng(4).normal(size=vocab).astype(np.float32)
    expected = scipy.special.softmax(z.astype(np.float64))
    num = 40000
    tokens, _ = jax.jit(functools.partial(sample_tokens, temperature=1.0))(
        jnp.broadcast_to(jnp.asarray(z), (num, vocab)), jax.random.split(jax.random.key(5), num)
    )
    counts = np.bincount(np.asarray(tokens), minlength=vocab)
    assert counts.size == vocab
    top = np.argsort(-expected)[:30]  # the 30 likeliest tokens, then each block's remainder
    rest = np.ones(vocab, bool)
    rest[top] = False
    blocks = np.arange(vocab) // SAMPLING_BLOCK
    observed = np.concatenate([counts[top], np.bincount(blocks[rest], counts[rest])])
    predicted = num * np.concatenate([expected[top], np.bincount(blocks[rest], expected[rest])])
    assert scipy.stats.chisquare(observed, predicted).pvalue > 1e-3, (observed, predicted)


def test_inverse_cdf_never_picks_a_zero_probability_token_even_at_u_near_one():
    vocab = SAMPLING_BLOCK + 44
    probs = np.zeros((4, vocab), np.float32)
    probs[:, 5] = probs[:, SAMPLING_BLOCK + 3] = 0.5  # the padded last block holds the second one
    largest_below_one = np.nextafter(np.float32(1), np.float32(0))
    uniforms = np.array([[0, 0], [0.49, 0.99], [0.5, 0], [largest_below_one] * 2], np.float32)
    tokens = _two_level_inverse_cdf(jnp.asarray(probs), jnp.asarray(uniforms))
    np.testing.assert_array_equal(np.asarray(tokens), [5, 5, SAMPLING_BLOCK + 3, SAMPLING_BLOCK + 3])
