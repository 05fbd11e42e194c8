"""The registered policy losses: ppo_clip, stapo, entropy_topk, kl_cov, clip_cov, sent.

Each is a per-token loss (stage 2) plus, for the entropy-aware methods, a whole-batch
selection (stage 1). Formulas: docs/algorithms.md, "Policy losses".
"""

import chex
import jax
import jax.numpy as jnp

from entropy_rl.losses.kl import kl_estimate
from entropy_rl.losses.policy import (
    CLIP_KNOBS,
    LossInputs,
    PolicyLossConfig,
    Selection,
    clipped_surrogate,
    log_ratio,
    penalised_surrogate,
    register_policy_loss,
)
from entropy_rl.losses.selection import count_from_ratio, masked_quantile, masked_top_k
from entropy_rl.losses.token_stats import centered_covariance

CUI_ET_AL = (
    "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models "
    "(Cui et al., arXiv 2505.22617)"
)


def _config_clip(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    del coef
    return clipped_surrogate(inputs, config.clip_low, config.clip_high, config.dual_clip_c)


@register_policy_loss(
    "ppo_clip",
    paper="Proximal Policy Optimization Algorithms (arXiv 1707.06347), as used by GRPO "
    "(DeepSeekMath, arXiv 2402.03300), DAPO (arXiv 2503.14476) and JustRL",
    knobs=CLIP_KNOBS,
)
def ppo_clip(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """GRPO / DAPO / JustRL: the (dual-)clipped PPO surrogate over every valid token."""
    return _config_clip(inputs, coef, config)


def spurious_token_mask(
    logp: chex.Array,
    entropy: chex.Array,
    advantages: chex.Array,
    mask: chex.Array,
    *,
    prob_threshold: float,
    entropy_quantile: float,
) -> chex.Array:
    """STAPO's spurious tokens: valid, A > 0, p < prob_threshold and H < q, where q is the
    ``entropy_quantile`` quantile of H over the valid tokens. All [B, T] -> [B, T] float32."""
    chex.assert_rank(logp, 2)
    chex.assert_equal_shape((logp, entropy, advantages, mask))
    threshold = masked_quantile(entropy, mask, entropy_quantile)
    spurious = (
        (jnp.asarray(mask) != 0)
        & (advantages > 0)
        & (jnp.exp(logp) < prob_threshold)
        & (entropy < threshold)
    )
    return spurious.astype(jnp.float32)


def _stapo_select(inputs: LossInputs, config: PolicyLossConfig, rng) -> Selection:
    del rng
    spurious = spurious_token_mask(
        inputs.logp,
        inputs.entropy,
        inputs.advantages,
        inputs.mask,
        prob_threshold=config.stapo_prob_threshold,
        entropy_quantile=config.stapo_entropy_quantile,
    )
    keep = inputs.mask * (1.0 - spurious)
    return Selection(keep, keep, jnp.zeros_like(keep), spurious)


@register_policy_loss(
    "stapo",
    select=_stapo_select,
    flag_metric="spurious_fraction",
    paper="STAPO, silencing spurious tokens (arXiv 2602.15620)",
    knobs=CLIP_KNOBS + ("stapo_prob_threshold", "stapo_entropy_quantile"),
    selects_by_entropy=True,
)
def stapo(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """STAPO: the DAPO clip objective over non-spurious tokens, renormalised over them."""
    return _config_clip(inputs, coef, config)


def _entropy_topk_select(inputs: LossInputs, config: PolicyLossConfig, rng) -> Selection:
    del rng
    num_keep = count_from_ratio(jnp.sum(inputs.mask), config.entropy_top_ratio, rounding="ceil")
    keep = masked_top_k(inputs.entropy, inputs.mask, num_keep)
    return Selection(keep, keep, jnp.zeros_like(keep), inputs.mask - keep)


@register_policy_loss(
    "entropy_topk",
    select=_entropy_topk_select,
    flag_metric="masked_fraction",
    paper="Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM "
    "Reasoning (arXiv 2506.01939)",
    knobs=CLIP_KNOBS + ("entropy_top_ratio",),
    selects_by_entropy=True,
)
def entropy_topk(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """20-Entropy: the clip objective over the ceil(top_ratio N) highest-entropy tokens only."""
    return _config_clip(inputs, coef, config)


def _kl_cov_select(inputs: LossInputs, config: PolicyLossConfig, rng) -> Selection:
    del rng
    m = inputs.mask
    cov = centered_covariance(inputs.logp, inputs.advantages, m)
    num_penalised = count_from_ratio(jnp.sum(m), config.kl_cov_ratio, rounding="floor", minimum=1)
    penalised = masked_top_k(cov, m, num_penalised)
    return Selection(m, m, config.kl_cov_beta * penalised, penalised)


@register_policy_loss(
    "kl_cov",
    select=_kl_cov_select,
    flag_metric="penalised_fraction",
    paper=CUI_ET_AL,
    knobs=("kl_cov_ratio", "kl_cov_beta"),
)
def kl_cov(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """KL-Cov: -A r, plus beta |logp - old_logp| on the top covariance tokens."""
    del config
    return penalised_surrogate(inputs, coef), {}


def _clip_cov_select(inputs: LossInputs, config: PolicyLossConfig, rng) -> Selection:
    m = inputs.mask
    ratio = jnp.exp(log_ratio(inputs))
    adv = inputs.advantages
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    clipped = -adv * clipped_ratio > -adv * ratio
    cov = centered_covariance(inputs.logp, adv, m)
    candidates = (m != 0) & ~clipped & (cov > config.clip_cov_lb) & (cov < config.clip_cov_ub)
    num_dropped = count_from_ratio(jnp.sum(m), config.clip_cov_ratio, rounding="floor", minimum=1)
    random_keys = jax.random.uniform(rng, m.shape)
    dropped = masked_top_k(random_keys, candidates, num_dropped)
    return Selection(m - dropped, m, jnp.zeros_like(m), dropped)


@register_policy_loss(
    "clip_cov",
    select=_clip_cov_select,
    flag_metric="dropped_fraction",
    paper=CUI_ET_AL,
    knobs=CLIP_KNOBS + ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"),
    needs_rng=True,
)
def clip_cov(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """Clip-Cov: the PPO clip surrogate of clip_low / clip_high / dual_clip_c (the paper sets
    clip_low = clip_high = 1 and no dual clip) over the tokens its selection keeps."""
    return _config_clip(inputs, coef, config)


def _sent_low_entropy(inputs: LossInputs, config: PolicyLossConfig) -> chex.Array:
    """SENT's set L: the max(1, floor(N sent_low_entropy_ratio)) valid tokens of lowest H."""
    m = inputs.mask
    num_low = count_from_ratio(
        jnp.sum(m), config.sent_low_entropy_ratio, rounding="floor", minimum=1
    )
    return masked_top_k(inputs.entropy, m, num_low, largest=False)


def selection_covariance(name: str, inputs: LossInputs, config: PolicyLossConfig) -> chex.Array:
    """The centred covariance ``(logp - mean logp)(A - mean A)`` that a method ranks tokens by,
    [B, T] float32: SENT's over its low-entropy set L (0 outside it), every other method's
    (KL-Cov, Clip-Cov; Cui et al.) over all valid tokens of the batch."""
    scope = _sent_low_entropy(inputs, config) if name == "sent" else inputs.mask
    return centered_covariance(inputs.logp, inputs.advantages, scope)


def _sent_select(inputs: LossInputs, config: PolicyLossConfig, rng) -> Selection:
    del rng
    m = inputs.mask
    low_entropy = _sent_low_entropy(inputs, config)
    cov = centered_covariance(inputs.logp, inputs.advantages, low_entropy)
    num_selected = count_from_ratio(
        jnp.sum(low_entropy), config.sent_cov_ratio, rounding="floor", minimum=1
    )
    high_cov = masked_top_k(cov, low_entropy, num_selected)
    if config.sent_variant == "paper":
        coef = config.sent_beta * high_cov
    else:
        # The high-covariance choice wins when the two sets overlap (|L| < 2n).
        low_cov = masked_top_k(cov, low_entropy, num_selected, largest=False) * (1.0 - high_cov)
        coef = config.sent_beta * (
            config.sent_high_mult * high_cov + config.sent_low_mult * low_cov
        )
    return Selection(m, m, coef, (coef > 0).astype(jnp.float32))


def _sent_knobs(config: PolicyLossConfig) -> tuple[str, ...]:
    """SENT's fields: "code" has no clip and no KL estimator, "paper" no low-covariance set."""
    shared = ("sent_variant", "sent_low_entropy_ratio", "sent_cov_ratio", "sent_beta")
    if config.sent_variant == "paper":
        return shared + CLIP_KNOBS + ("sent_kl_kind",)
    return shared + ("sent_high_mult", "sent_low_mult")


@register_policy_loss(
    "sent",
    select=_sent_select,
    flag_metric="penalised_fraction",
    paper="SENT, selective penalties on low-entropy tokens (arXiv 2512.04359)",
    knobs=_sent_knobs,
    selects_by_entropy=True,
    reads_reference=lambda config: config.sent_variant == "paper",
)
def sent(inputs: LossInputs, coef: chex.Array, config: PolicyLossConfig):
    """SENT token-level loss.

    "code": -A r + coef |logp - old_logp| (unclipped), coef from the low-entropy set's
    covariance extremes. "paper": clipped surrogate + coef KL_{sent_kl_kind}(pi || pi_ref).
    """
    if config.sent_variant == "code":
        return penalised_surrogate(inputs, coef), {}
    loss, indicators = _config_clip(inputs, coef, config)
    return loss + coef * kl_estimate(inputs.logp, inputs.ref_logp, config.sent_kl_kind), indicators
