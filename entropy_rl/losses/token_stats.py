"""Per-token statistics of the policy: log-probabilities, entropy, STAPO's gradient-norm
quantities and the centred covariance of Cui et al. Everything is computed in float32.

  logp_t = z_{y_t} - logsumexp(z)              z = logits / temperature
  H_t    = -sum_j p_j log p_j                   p = softmax(z)
  C_t    = sum_j p_j^2                          collision probability = exp(-Renyi-2 entropy)
  ||d(-A logp_t)/dz||^2 = A^2 (1 - 2 p_t + C_t)  (STAPO, Theorem 3.1)
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

# Start value of the running max: finite, so (m_old - m_new) * 0 stays 0 (not nan).
_RUNNING_MAX_INIT = -1e30


def logprobs_and_entropy(
    logits: chex.Array, targets: chex.Array, *, temperature: float = 1.0
) -> tuple[chex.Array, chex.Array]:
    """Log-probability of each target and the entropy of each distribution.

    Args:
      logits: [..., V] (any float dtype; computed in float32).
      targets: [...] int token ids.
      temperature: logits are divided by it before the softmax.

    Returns:
      (logp [...], entropy [...]), both float32.
    """
    chex.assert_rank(targets, logits.ndim - 1)
    chex.assert_type(targets, int)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
    logp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    probs = jnp.exp(log_probs)
    entropy = -jnp.sum(probs * log_probs, axis=-1)
    return logp, entropy


def collision_probability(logits: chex.Array, *, temperature: float = 1.0) -> chex.Array:
    """``sum_j p_j^2`` of softmax(logits / temperature): [..., V] -> [...] float32."""
    chex.assert_type(logits, float)
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
    return jnp.exp(jax.nn.logsumexp(2.0 * log_probs, axis=-1))


def logit_grad_norm_sq(
    logp: chex.Array, collision: chex.Array, advantages: chex.Array
) -> chex.Array:
    """Squared norm of the gradient of ``-A logp`` w.r.t. the (temperature-scaled) logits.

    ``A^2 (1 - 2p + sum_j p_j^2)`` with p = exp(logp); all inputs [...] -> [...] float32.
    """
    chex.assert_equal_shape((logp, collision, advantages))
    p = jnp.exp(jnp.asarray(logp, jnp.float32))
    a = jnp.asarray(advantages, jnp.float32)
    return jnp.square(a) * (1.0 - 2.0 * p + jnp.asarray(collision, jnp.float32))


def logit_grad_norm_sq_bounds(
    logp: chex.Array, entropy: chex.Array, advantages: chex.Array, *, vocab_size: int
) -> tuple[chex.Array, chex.Array]:
    """Entropy bounds on ``logit_grad_norm_sq`` (STAPO, Theorem 3.1).

    ``A^2 (1 - 2p + e^-H) <= ||grad||^2 <= A^2 (2 - 2p - C_V H^2)``,
    ``C_V = (V - 1) / (V (ln V)^2)``. Inputs [...] -> (lower [...], upper [...]).
    """
    chex.assert_equal_shape((logp, entropy, advantages))
    p = jnp.exp(jnp.asarray(logp, jnp.float32))
    h = jnp.asarray(entropy, jnp.float32)
    a_sq = jnp.square(jnp.asarray(advantages, jnp.float32))
    c_v = (vocab_size - 1) / (vocab_size * np.log(vocab_size) ** 2)
    return a_sq * (1.0 - 2.0 * p + jnp.exp(-h)), a_sq * (2.0 - 2.0 * p - c_v * jnp.square(h))


def centered_covariance(logp: chex.Array, advantages: chex.Array, mask: chex.Array) -> chex.Array:
    """``cov_t = (logp_t - mean logp)(A_t - mean A)``, means over the tokens where mask != 0.

    Args:
      logp, advantages, mask: [...] (same shape; mask 0/1 or bool).

    Returns:
      [...] float32, exactly 0 where the mask is 0 (and everywhere if nothing is valid).
    """
    chex.assert_equal_shape((logp, advantages, mask))
    valid = jnp.asarray(mask) != 0
    weight = valid.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    lp = jnp.where(valid, jnp.asarray(logp, jnp.float32), 0.0)
    adv = jnp.where(valid, jnp.asarray(advantages, jnp.float32), 0.0)
    lp_centred = lp - jnp.sum(lp) / count
    adv_centred = adv - jnp.sum(adv) / count
    return jnp.where(valid, lp_centred * adv_centred, 0.0)


def chunked_logprobs_and_entropy(
    hidden: chex.Array,
    unembedding: chex.Array,
    targets: chex.Array,
    *,
    chunk_size: int,
    temperature: float = 1.0,
) -> tuple[chex.Array, chex.Array]:
    """``logprobs_and_entropy(hidden @ unembedding.T, targets)`` without the [..., V] logits.

    The vocabulary is streamed in chunks of ``chunk_size`` rows of the unembedding with an
    online logsumexp; a custom VJP recomputes each chunk's logits in the backward pass, so
    forward and backward working memory is O(tokens * chunk_size), not O(tokens * V).
    The last chunk overlaps the previous one when V is not a multiple of ``chunk_size``
    (its already-seen columns are masked), so every chunk has the same static shape.

    Args:
      hidden: [..., D] final hidden states.
      unembedding: [V, D] (the HF embedding / lm_head layout).
      targets: [...] int token ids.
      chunk_size: vocabulary rows per chunk (clamped to V).
      temperature: logits are divided by it.

    Returns:
      (logp [...], entropy [...]), float32; differentiable w.r.t. hidden and unembedding.
    """
    chex.assert_rank(unembedding, 2)
    chex.assert_rank(targets, hidden.ndim - 1)
    chex.assert_type(targets, int)
    if hidden.shape[-1] != unembedding.shape[1]:
        raise ValueError(
            f"hidden size {hidden.shape[-1]} does not match unembedding {unembedding.shape}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk = min(int(chunk_size), unembedding.shape[0])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1).astype(jnp.int32)
    logp, entropy = _chunked_stats(
        chunk, float(temperature), flat_hidden, unembedding, flat_targets
    )
    return logp.reshape(targets.shape), entropy.reshape(targets.shape)


def chunked_collision_probability(
    hidden: chex.Array, unembedding: chex.Array, *, chunk_size: int, temperature: float = 1.0
) -> chex.Array:
    """``collision_probability(hidden @ unembedding.T)`` without the [..., V] logits.

    Streams the vocabulary in chunks as ``chunked_logprobs_and_entropy`` does, with running
    sums ``S1 = sum_j exp(z_j - m)`` and ``S2 = sum_j exp(2 (z_j - m))`` under a running max m:
    ``sum_j p_j^2 = S2 / S1^2``. A diagnostic (no custom VJP: not for the loss).

    Args:
      hidden: [..., D]; unembedding: [V, D]; chunk_size: vocabulary rows per chunk (clamped
      to V); temperature: logits are divided by it.

    Returns:
      [...] float32.
    """
    chex.assert_rank(unembedding, 2)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    chunk = min(int(chunk_size), unembedding.shape[0])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])

    def step(carry, index):
        running_max, sum_exp, sum_exp2 = carry
        z, _, is_new, _ = _chunk_logits(chunk, float(temperature), flat_hidden, unembedding, index)
        new_max = jnp.maximum(running_max, jnp.max(jnp.where(is_new, z, -jnp.inf), axis=1))
        rescale = jnp.exp(running_max - new_max)
        e = jnp.where(is_new, jnp.exp(z - new_max[:, None]), 0.0)
        return (new_max, rescale * sum_exp + jnp.sum(e, axis=1),
                jnp.square(rescale) * sum_exp2 + jnp.sum(jnp.square(e), axis=1)), None

    zeros = jnp.zeros((flat_hidden.shape[0],), jnp.float32)
    init = (jnp.full_like(zeros, _RUNNING_MAX_INIT), zeros, zeros)
    indices = jnp.arange(_num_chunks(chunk, unembedding.shape[0]), dtype=jnp.int32)
    (_, sum_exp, sum_exp2), _ = jax.lax.scan(step, init, indices)
    return (sum_exp2 / jnp.square(sum_exp)).reshape(hidden.shape[:-1])


def _chunk_logits(chunk, temperature, hidden, unembedding, index):
    """Logits of chunk ``index``: (z [N, chunk] float32, start, new-column mask [chunk], columns)."""
    vocab = unembedding.shape[0]
    start = jnp.minimum(index * chunk, vocab - chunk)
    rows = jax.lax.dynamic_slice_in_dim(unembedding, start, chunk, axis=0)
    z = jnp.dot(hidden, rows.T, preferred_element_type=jnp.float32)
    if temperature != 1.0:
        z = z / temperature
    columns = start + jnp.arange(chunk, dtype=jnp.int32)
    return z, start, columns >= index * chunk, columns


def _num_chunks(chunk, vocab):
    """ceil(vocab / chunk)."""
    return -(-vocab // chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_stats(chunk, temperature, hidden, unembedding, targets):
    """(logp [N], entropy [N]) from hidden [N, D], unembedding [V, D], targets [N]."""
    return _chunked_stats_fwd(chunk, temperature, hidden, unembedding, targets)[0]


def _chunked_stats_fwd(chunk, temperature, hidden, unembedding, targets):
    """Online logsumexp over vocabulary chunks; keeps only per-token scalars as residuals."""
    num_tokens = hidden.shape[0]

    def step(carry, index):
        running_max, sum_exp, sum_exp_shift, target_logit = carry
        z, _, is_new, columns = _chunk_logits(chunk, temperature, hidden, unembedding, index)
        z_new = jnp.where(is_new, z, -jnp.inf)
        new_max = jnp.maximum(running_max, jnp.max(z_new, axis=1))
        rescale = jnp.exp(running_max - new_max)
        shift = jnp.where(is_new, z - new_max[:, None], 0.0)
        e = jnp.where(is_new, jnp.exp(shift), 0.0)
        # sum_exp_shift = sum_j exp(z_j - m) (z_j - m), rescaled when m grows.
        sum_exp_shift = rescale * (sum_exp_shift + (running_max - new_max) * sum_exp)
        sum_exp_shift += jnp.sum(e * shift, axis=1)
        sum_exp = rescale * sum_exp + jnp.sum(e, axis=1)
        is_target = is_new & (columns == targets[:, None])
        target_logit += jnp.sum(jnp.where(is_target, z, 0.0), axis=1)
        return (new_max, sum_exp, sum_exp_shift, target_logit), None

    zeros = jnp.zeros((num_tokens,), jnp.float32)
    init = (jnp.full((num_tokens,), _RUNNING_MAX_INIT, jnp.float32), zeros, zeros, zeros)
    indices = jnp.arange(_num_chunks(chunk, unembedding.shape[0]), dtype=jnp.int32)
    (running_max, sum_exp, sum_exp_shift, target_logit), _ = jax.lax.scan(step, init, indices)
    log_sum_exp = running_max + jnp.log(sum_exp)
    mean_shift = sum_exp_shift / sum_exp
    logp = target_logit - log_sum_exp
    entropy = jnp.log(sum_exp) - mean_shift
    mean_logit = running_max + mean_shift
    return (logp, entropy), (hidden, unembedding, targets, log_sum_exp, mean_logit)


def _chunked_stats_bwd(chunk, temperature, residuals, cotangents):
    """Recomputes each chunk's logits and accumulates the hidden / unembedding gradients."""
    hidden, unembedding, targets, log_sum_exp, mean_logit = residuals
    g_logp, g_entropy = cotangents

    def step(carry, index):
        g_hidden, g_unembedding = carry
        z, start, is_new, columns = _chunk_logits(chunk, temperature, hidden, unembedding, index)
        p = jnp.where(is_new, jnp.exp(z - log_sum_exp[:, None]), 0.0)
        is_target = (is_new & (columns == targets[:, None])).astype(jnp.float32)
        # d logp / dz_j = 1[j = y] - p_j ;  d H / dz_j = -p_j (z_j - E_p[z]).
        g_z = g_logp[:, None] * (is_target - p) - g_entropy[:, None] * p * (z - mean_logit[:, None])
        if temperature != 1.0:
            g_z = g_z / temperature
        rows = jax.lax.dynamic_slice_in_dim(unembedding, start, chunk, axis=0)
        g_hidden += jnp.dot(g_z, rows.astype(jnp.float32), preferred_element_type=jnp.float32)
        g_rows = jnp.dot(g_z.T, hidden.astype(jnp.float32), preferred_element_type=jnp.float32)
        g_rows += jax.lax.dynamic_slice_in_dim(g_unembedding, start, chunk, axis=0)
        g_unembedding = jax.lax.dynamic_update_slice_in_dim(g_unembedding, g_rows, start, axis=0)
        return (g_hidden, g_unembedding), None

    init = (jnp.zeros(hidden.shape, jnp.float32), jnp.zeros(unembedding.shape, jnp.float32))
    indices = jnp.arange(_num_chunks(chunk, unembedding.shape[0]), dtype=jnp.int32)
    (g_hidden, g_unembedding), _ = jax.lax.scan(step, init, indices)
    g_targets = np.zeros(targets.shape, dtype=jax.dtypes.float0)
    return g_hidden.astype(hidden.dtype), g_unembedding.astype(unembedding.dtype), g_targets


_chunked_stats.defvjp(_chunked_stats_fwd, _chunked_stats_bwd)
