"""Group-relative advantages for outcome rewards (one reward per response).

For a group of G responses to one prompt with rewards R:

  grpo    A_i = (R_i - mean R) / (std R + eps)      std with Bessel's correction
  drgrpo  A_i = R_i - mean R
  rloo    A_i = R_i - mean_{j != i} R_j  =  G / (G - 1) (R_i - mean R)
"""

import chex
import jax.numpy as jnp

ADVANTAGE_ESTIMATORS = ("grpo", "drgrpo", "rloo")


def group_advantages(
    rewards: chex.Array, *, estimator: str = "grpo", eps: float = 1e-6
) -> chex.Array:
    """Advantages of each response relative to its group.

    Args:
      rewards: [num_groups, group_size] rewards (group_size >= 2 for grpo and rloo).
      estimator: one of ``ADVANTAGE_ESTIMATORS``.
      eps: added to the std (grpo).

    Returns:
      [num_groups, group_size] float32 advantages; a group with equal rewards gets zeros.
    """
    chex.assert_rank(rewards, 2)
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; expected one of {ADVANTAGE_ESTIMATORS}"
        )
    group_size = rewards.shape[1]
    if estimator in ("grpo", "rloo") and group_size < 2:
        raise ValueError(f"{estimator} needs at least 2 responses per group, got {group_size}")
    r = jnp.asarray(rewards, jnp.float32)
    centred = r - jnp.mean(r, axis=1, keepdims=True)
    if estimator == "drgrpo":
        return centred
    if estimator == "rloo":
        return centred * (group_size / (group_size - 1))
    std = jnp.std(r, axis=1, keepdims=True, ddof=1)
    return centred / (std + eps)


def zero_variance_groups(rewards: chex.Array) -> chex.Array:
    """[num_groups] bool: True where every reward of the group is equal (no signal).

    DAPO's dynamic sampling drops these groups and samples more prompts.
    """
    chex.assert_rank(rewards, 2)
    r = jnp.asarray(rewards)
    return jnp.all(r == r[:, :1], axis=1)
