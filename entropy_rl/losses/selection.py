"""Static-shape token selection over the valid tokens of a batch.

Quantiles and top-k by rank are computed with a sort over the whole (flattened) batch,
invalid tokens pushed to the end, and a data-dependent count k: no boolean indexing, so
each function runs under jit, vmap and grad, for any number of valid tokens, with one
compilation per input shape. All results are stop-gradient selections.
"""

import chex
import jax
import jax.numpy as jnp

# A product ratio * n this close (relatively) to an integer is taken as that integer, so
# that e.g. ceil(0.2 * 5) is 1 in float32 as it is in exact arithmetic.
_INTEGER_TOLERANCE = 1e-6


def count_from_ratio(
    num_valid: chex.Array, ratio: float, *, rounding: str, minimum: int = 0
) -> chex.Array:
    """int32 ``max(minimum, floor|ceil(ratio * num_valid))``, never above ``num_valid``.

    Args:
      num_valid: scalar count of valid tokens (any numeric dtype).
      ratio: fraction in [0, 1].
      rounding: "floor" or "ceil".
      minimum: lower bound on the count when there is at least one valid token.
    """
    if rounding not in ("floor", "ceil"):
        raise ValueError(f"rounding must be 'floor' or 'ceil', got {rounding!r}")
    n = jnp.asarray(num_valid, jnp.float32)
    product = n * jnp.float32(ratio)
    nearest = jnp.round(product)
    near_integer = jnp.abs(product - nearest) <= _INTEGER_TOLERANCE * jnp.maximum(nearest, 1.0)
    rounded = jnp.floor(product) if rounding == "floor" else jnp.ceil(product)
    count = jnp.where(near_integer, nearest, rounded)
    count = jnp.where(n > 0, jnp.maximum(count, minimum), 0.0)
    return jnp.minimum(count, n).astype(jnp.int32)


def masked_rank(values: chex.Array, mask: chex.Array, *, descending: bool = True) -> chex.Array:
    """Rank of each valid token among the valid tokens of the whole array.

    Args:
      values: [...] float values (compared as float32).
      mask: [...] 0/1 or bool, same shape.
      descending: rank 0 is the largest value (True) or the smallest (False).

    Returns:
      [...] int32 ranks; valid tokens get 0..n-1 (ties broken by flat position), invalid
      tokens get ranks >= n.
    """
    chex.assert_equal_shape((values, mask))
    flat_values = jnp.asarray(values, jnp.float32).reshape(-1)
    flat_valid = jnp.asarray(mask).reshape(-1) != 0
    key = jnp.where(flat_valid, flat_values, 0.0)
    key = -key if descending else key
    positions = jnp.arange(flat_values.shape[0], dtype=jnp.int32)
    # lexsort: the last key is the primary one (valid first, then by value, then position).
    order = jnp.lexsort((positions, key, ~flat_valid))
    ranks = jnp.zeros_like(positions).at[order].set(positions)
    return jax.lax.stop_gradient(ranks.reshape(jnp.shape(values)))


def masked_top_k(
    values: chex.Array, mask: chex.Array, k: chex.Array, *, largest: bool = True
) -> chex.Array:
    """0/1 float32 mask of the k valid tokens with the largest (or smallest) values.

    ``k`` may be a traced int scalar; if it exceeds the number of valid tokens, all valid
    tokens are selected. Invalid tokens are never selected.
    """
    ranks = masked_rank(values, mask, descending=largest)
    selected = (ranks < k) & (jnp.asarray(mask) != 0)
    return selected.astype(jnp.float32)


def masked_quantile(values: chex.Array, mask: chex.Array, q: float) -> chex.Array:
    """The q-quantile of the valid values (numpy's default "linear" method), float32 scalar.

    Returns 0 when no token is valid.
    """
    chex.assert_equal_shape((values, mask))
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    flat_values = jnp.asarray(values, jnp.float32).reshape(-1)
    flat_valid = jnp.asarray(mask).reshape(-1) != 0
    ordered = jnp.sort(jnp.where(flat_valid, flat_values, jnp.inf))
    num_valid = jnp.sum(flat_valid.astype(jnp.int32))
    position = jnp.float32(q) * jnp.maximum(num_valid - 1, 0).astype(jnp.float32)
    lower = jnp.floor(position).astype(jnp.int32)
    upper = jnp.minimum(lower + 1, jnp.maximum(num_valid - 1, 0))
    fraction = position - lower.astype(jnp.float32)
    low_value, high_value = ordered[lower], ordered[upper]
    quantile = low_value + fraction * (high_value - low_value)
    return jax.lax.stop_gradient(jnp.where(num_valid > 0, quantile, 0.0))
