"""Pure JAX loss library: token statistics, KL estimators, aggregation, advantages,
static-shape token selection and the entropy-aware policy losses (imports jax, chex,
numpy only).

Typical use in a train step with micro-batches::

    batch = LossInputs(logp=..., old_logp=..., advantages=..., mask=..., entropy=...)
    prepared = prepare_policy_loss("stapo", batch, config=cfg)            # whole batch
    for rows in micro_batches:
      rows_batch = jax.tree.map(lambda x: x[rows], batch)
      num, sums = policy_loss_terms("stapo", prepared.rows(rows), rows_batch, config=cfg)
      loss_part = num / prepared.denominator[0]       # grads of the parts add up exactly
    metrics = metric_means(accumulated sums)
"""

from entropy_rl.losses.advantages import (
    ADVANTAGE_ESTIMATORS,
    group_advantages,
    zero_variance_groups,
)
from entropy_rl.losses.aggregation import (
    AGG_MODES,
    aggregate,
    aggregate_terms,
    aggregation_weights,
    safe_divide,
)
from entropy_rl.losses.kl import KL_KINDS, kl_estimate
from entropy_rl.losses.methods import selection_covariance, spurious_token_mask
from entropy_rl.losses.policy import (
    CLIP_KNOBS,
    SHARED_KNOBS,
    LossInputs,
    PolicyLossConfig,
    PolicyLossSpec,
    PreparedLoss,
    Selection,
    clipped_surrogate,
    get_policy_loss,
    metric_means,
    penalised_surrogate,
    policy_loss,
    policy_loss_names,
    policy_loss_terms,
    prepare_policy_loss,
    register_policy_loss,
)
from entropy_rl.losses.selection import (
    count_from_ratio,
    masked_quantile,
    masked_rank,
    masked_top_k,
)
from entropy_rl.losses.token_stats import (
    centered_covariance,
    chunked_collision_probability,
    chunked_logprobs_and_entropy,
    collision_probability,
    logit_grad_norm_sq,
    logit_grad_norm_sq_bounds,
    logprobs_and_entropy,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "CLIP_KNOBS",
    "KL_KINDS",
    "LossInputs",
    "SHARED_KNOBS",
    "PolicyLossConfig",
    "PolicyLossSpec",
    "PreparedLoss",
    "Selection",
    "aggregate",
    "aggregate_terms",
    "aggregation_weights",
    "centered_covariance",
    "chunked_collision_probability",
    "chunked_logprobs_and_entropy",
    "clipped_surrogate",
    "collision_probability",
    "count_from_ratio",
    "get_policy_loss",
    "group_advantages",
    "kl_estimate",
    "logit_grad_norm_sq",
    "logit_grad_norm_sq_bounds",
    "logprobs_and_entropy",
    "masked_quantile",
    "masked_rank",
    "masked_top_k",
    "metric_means",
    "penalised_surrogate",
    "policy_loss",
    "policy_loss_names",
    "policy_loss_terms",
    "prepare_policy_loss",
    "register_policy_loss",
    "safe_divide",
    "selection_covariance",
    "spurious_token_mask",
    "zero_variance_groups",
]
