"""Loss aggregation over a [B, T] batch of per-token values, exact under micro-batching.

With ``m`` the mask and ``l`` the per-token loss (docs/algorithms.md, "Loss aggregation"):

  token-mean               sum(m l) / sum(m)
  seq-mean-token-sum       mean over rows with >= 1 valid token of sum_t(m l)
  seq-mean-token-mean      mean over rows with >= 1 valid token of sum_t(m l) / sum_t(m)
  seq-mean-token-sum-norm  sum(m l) / (B * L), L = ``horizon`` (default T)   (Dr.GRPO)

Every mode is written as ``sum(w * l) / D`` where the weights ``w`` depend only on each
row's own mask and the denominator ``D`` is a sum over rows. Both therefore add up exactly
across any split of the batch into row slices (micro-batches, data-parallel shards):
accumulate numerators and denominators, divide once.
"""

import chex
import jax.numpy as jnp

AGG_MODES = (
    "token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def check_mode(mode: str) -> None:
    """Raises ValueError for an unknown aggregation mode."""
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")


def aggregation_weights(
    mask: chex.Array, mode: str, *, horizon: int | None = None
) -> tuple[chex.Array, chex.Array]:
    """Per-token weights and this slice's additive share of the denominator.

    Args:
      mask: [B, T] 0/1 mask (any dtype).
      mode: one of ``AGG_MODES``.
      horizon: L for ``seq-mean-token-sum-norm`` (default T = mask.shape[1]).

    Returns:
      (weights [B, T] float32, denominator scalar float32) with
      ``aggregate(l, mask, mode) = sum(weights * l) / denominator``. Weights are 0 where
      the mask is 0; the denominator sums over rows, so it accumulates across row slices.
    """
    chex.assert_rank(mask, 2)
    check_mode(mode)
    m = jnp.asarray(mask, jnp.float32)
    tokens_per_row = jnp.sum(m, axis=1)
    nonempty_rows = jnp.sum((tokens_per_row > 0).astype(jnp.float32))
    if mode == "token-mean":
        return m, jnp.sum(m)
    if mode == "seq-mean-token-sum":
        return m, nonempty_rows
    if mode == "seq-mean-token-mean":
        return m / jnp.maximum(tokens_per_row, 1.0)[:, None], nonempty_rows
    length = mask.shape[1] if horizon is None else horizon
    return m, jnp.float32(mask.shape[0] * length)


def aggregate_terms(
    values: chex.Array, mask: chex.Array, mode: str, *, horizon: int | None = None
) -> tuple[chex.Array, chex.Array]:
    """(numerator, denominator) of ``aggregate``; both add up across row slices.

    Args:
      values: [B, T] per-token values.
      mask: [B, T] 0/1 mask.
      mode, horizon: as in ``aggregation_weights``.

    Returns:
      Two float32 scalars. For micro-batches: ``sum(nums) / sum(dens)`` equals the
      aggregate of the whole batch, value and gradient.
    """
    chex.assert_rank(values, 2)
    chex.assert_equal_shape((values, mask))
    weights, denominator = aggregation_weights(mask, mode, horizon=horizon)
    masked_values = jnp.where(weights != 0, jnp.asarray(values, jnp.float32), 0.0)
    return jnp.sum(weights * masked_values), denominator


def safe_divide(numerator: chex.Array, denominator: chex.Array) -> chex.Array:
    """numerator / denominator, and 0 where the denominator is 0 (an empty batch)."""
    return numerator / jnp.where(denominator > 0, denominator, 1.0)


def aggregate(
    values: chex.Array, mask: chex.Array, mode: str, *, horizon: int | None = None
) -> chex.Array:
    """Aggregates [B, T] per-token values to a float32 scalar (see module docstring).

    Masked positions get exactly zero gradient; an all-masked batch gives 0.
    """
    return safe_divide(*aggregate_terms(values, mask, mode, horizon=horizon))
