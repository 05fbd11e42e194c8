"""The sampling distribution: temperature, top-k and top-p applied to logits, with static shapes.

The sampler draws from, and reports log-probs under, exactly the distribution
`softmax(filter_logits(z))`, so a trainer can recompute the same numbers from a forward pass
with `sampling_logprobs`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from entropy_rl.rollout.batching import round_up


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits of the sampling distribution, float32 [..., V] -> [..., V].

    `z / temperature`, then top-k, then top-p (the order of transformers' logits warpers);
    removed tokens get -inf:
      - top-k (k > 0): drop z_j < (k-th largest z); ties with the k-th are kept.
      - top-p (p < 1): sort the kept tokens by probability, descending; keep token j iff the
        probability mass strictly before it is < p (the smallest prefix with mass >= p,
        ties with its last member are kept).
    temperature 0 is greedy: the point mass on argmax z (first index on ties), i.e. 0 at the
    argmax and -inf elsewhere.
    """
    chex.assert_rank(logits, {1, 2, 3})
    z = logits.astype(jnp.float32)
    vocab = z.shape[-1]
    if temperature == 0.0:
        greedy = jnp.argmax(z, axis=-1)[..., None]
        return jnp.where(jnp.arange(vocab) == greedy, 0.0, -jnp.inf)
    z = z / temperature
    if 0 < top_k < vocab:
        kth_largest = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth_largest, -jnp.inf, z)
    if top_p < 1.0:
        descending = -jnp.sort(-z, axis=-1)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1, keepdims=True)
        z = jnp.where(z < threshold, -jnp.inf, z)
    return z


def sampling_logprobs(
    logits: jax.Array, tokens: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """log pi_sample(token), float32 [...]: log_softmax(filter_logits(logits))[token].

    logits [..., V], tokens [...] int. -inf for a token the filters remove; 0 for the argmax
    when greedy.
    """
    chex.assert_rank(tokens, logits.ndim - 1)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return _token_logprobs(jax.nn.log_softmax(filtered, axis=-1), tokens)


def sample_tokens(
    logits: jax.Array, keys: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """One token per row from the sampling distribution, and its log-prob under it.

    logits [B, V]; keys [B] (one PRNG key per row, so a row's sample does not depend on the
    other rows). Returns tokens [B] int32 and logprobs [B] float32. Greedy (temperature 0)
    returns argmax with log-prob 0 and uses no randomness.
    """
    chex.assert_rank(logits, 2)
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, jnp.zeros(tokens.shape, jnp.float32)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    logprobs = jax.nn.log_softmax(filtered, axis=-1)
    uniforms = jax.vmap(lambda key: jax.random.uniform(key, (2,)))(keys)
    tokens = _two_level_inverse_cdf(jnp.exp(logprobs), uniforms)
    return tokens, _token_logprobs(logprobs, tokens)


SAMPLING_BLOCK = 256


def _two_level_inverse_cdf(probs: jax.Array, uniforms: jax.Array) -> jax.Array:
    """Token j with probability probs[j] / sum(probs) for each row: probs [B, V] >= 0,
    uniforms [B, 2] in [0, 1) -> int32 [B].

    Inverse-CDF sampling in two levels: a block of SAMPLING_BLOCK tokens with probability
    mass_b / total (first uniform), then a token within it with probability p_j / mass_b
    (second). The product is p_j / total, exact up to float32 rounding of the cumulative
    sums, which are taken over at most V / SAMPLING_BLOCK blocks or SAMPLING_BLOCK tokens,
    so a token's error is relative to its block's mass, not to the total. It needs two
    random numbers per row instead of V (Gumbel-max), and two short cumulative sums
    instead of one over V: about 20x faster than jax.random.categorical on CPU.
    """
    batch, vocab = probs.shape
    padded = jnp.pad(probs, ((0, 0), (0, round_up(vocab, SAMPLING_BLOCK) - vocab)))
    padded = padded.reshape(batch, -1, SAMPLING_BLOCK)
    block = _inverse_cdf(jnp.sum(padded, axis=-1), uniforms[:, 0])
    within = jnp.take_along_axis(padded, block[:, None, None], axis=1)[:, 0]
    return (block * SAMPLING_BLOCK + _inverse_cdf(within, uniforms[:, 1])).astype(jnp.int32)


def _inverse_cdf(weights: jax.Array, uniforms: jax.Array) -> jax.Array:
    """The first i with cumsum(weights)[i] > u * sum(weights), per row: weights [B, N] >= 0
    with a positive sum, uniforms [B] in [0, 1) -> [B]. A zero weight is never chosen."""
    cdf = jnp.cumsum(weights, axis=-1)
    index = jnp.sum(cdf <= (uniforms * cdf[:, -1])[:, None], axis=-1)
    # u * sum can round up to the sum: the last positive weight then takes it.
    last_positive = jnp.max(jnp.where(weights > 0, jnp.arange(weights.shape[-1]), 0), axis=-1)
    return jnp.minimum(index, last_positive)


def _token_logprobs(logprobs: jax.Array, tokens: jax.Array) -> jax.Array:
    """logprobs [..., V], tokens [...] -> logprobs[..., tokens] [...]."""
    return jnp.take_along_axis(logprobs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
