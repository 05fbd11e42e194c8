"""KL estimators from samples of the current policy (Schulman's k1, k2, k3).

With ``x = ref_logp - logp`` for tokens sampled from pi_theta:

  k1  = -x                      (unbiased, high variance, can be negative)
  abs = |x|
  k2  = 0.5 x^2
  k3  = exp(x) - x - 1          (unbiased, low variance, >= 0), clamped to [-10, 10]

``low_var_kl`` is an alias of ``k3``.
"""

import chex
import jax.numpy as jnp

KL_KINDS = ("k1", "abs", "k2", "k3", "low_var_kl")

LOG_RATIO_BOUND = 20.0
K3_BOUND = 10.0


def kl_estimate(logp: chex.Array, ref_logp: chex.Array, kind: str = "k3") -> chex.Array:
    """Per-token estimate of KL(pi_theta || pi_ref).

    Args:
      logp: [...] log-probabilities of the sampled tokens under pi_theta.
      ref_logp: [...] log-probabilities of the same tokens under pi_ref.
      kind: one of ``KL_KINDS``.

    Returns:
      [...] float32 estimate (not masked, not aggregated). ``x`` is clamped to
      [-20, 20] before ``exp`` so the result stays finite.
    """
    chex.assert_equal_shape((logp, ref_logp))
    x = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
    if kind == "k1":
        return -x
    if kind == "abs":
        return jnp.abs(x)
    if kind == "k2":
        return 0.5 * jnp.square(x)
    if kind in ("k3", "low_var_kl"):
        x = jnp.clip(x, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
        return jnp.clip(jnp.exp(x) - x - 1.0, -K3_BOUND, K3_BOUND)
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected one of {KL_KINDS}")
