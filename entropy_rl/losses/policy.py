"""Policy-gradient losses (PPO-clip family and the entropy-aware methods) and their registry.

Every loss is computed in two stages so that micro-batching is exact
(docs/algorithms.md, "Loss aggregation" and "Policy losses"):

1. ``prepare_policy_loss`` on the WHOLE update batch [B, T] (stop-gradient): the token
   selection of the method (STAPO keep-mask, SENT / KL-Cov penalty coefficients, Clip-Cov
   dropped tokens, 20-Entropy keep-mask), folded with the aggregation mode into per-token
   weights, plus the whole-batch denominator. Returns a ``PreparedLoss`` whose every leaf
   has leading axis B, so it is sliced (``prepared.rows(...)`` or ``jax.tree.map``) with the
   batch.
2. ``policy_loss_terms`` on any slice of rows: ``(numerator, metric_sums)``.
   ``sum(numerators over slices) / prepared.denominator[0]`` equals ``policy_loss`` on the
   whole batch, value and gradient; ``metric_means(sum of metric_sums)`` its metrics.

The total loss is ``agg_k(l_pg) + agg_m(ref_kl_coef * KL(pi || pi_ref) - entropy_coef * H)``
where ``agg_k`` aggregates over the tokens the method keeps and ``agg_m`` over all valid
tokens, both with ``config.loss_agg_mode``.

All three entry points take the batch as one ``LossInputs`` pytree. A new loss is one
decorated function returning its per-token loss, registered with what it needs (an optional
whole-batch selection, entropy, an rng, reference log-probs, the config fields it reads):

    @register_policy_loss("my_loss", paper="Title (arXiv 0000.00000)", knobs=CLIP_KNOBS)
    def my_loss(inputs: LossInputs, coef, config) -> (per_token_loss [B, T], indicators)

The trainer asks the registered ``PolicyLossSpec`` what to compute (``needs_reference``,
``needs_entropy``) and config validation calls ``spec.config_errors(config)``.
"""

import dataclasses
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from entropy_rl.losses.aggregation import AGG_MODES, aggregation_weights, safe_divide
from entropy_rl.losses.kl import KL_KINDS, LOG_RATIO_BOUND, kl_estimate

SENT_VARIANTS = ("code", "paper")


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
    """Every knob of the policy losses (defaults from docs/algorithms.md). Hashable: jit-static.

    PPO clip (ppo_clip, stapo, entropy_topk, sent "paper"):
      clip_low, clip_high: r is clipped to [1 - clip_low, 1 + clip_high].
      dual_clip_c: for A < 0 the loss is capped at -A * c; None turns dual clip off.
    Aggregation: loss_agg_mode (one of AGG_MODES), horizon (L of seq-mean-token-sum-norm;
      None = T).
    STAPO: a valid token is spurious when A > 0, p < stapo_prob_threshold and H is below the
      stapo_entropy_quantile quantile of H over the valid tokens.
    SENT: sent_variant "code" (released code, boolean selection fixed: -A r +
      beta_t |logp - old_logp|, unclipped; the top-n covariance tokens of the low-entropy set
      get sent_beta * sent_high_mult, the bottom-n sent_beta * sent_low_mult) or "paper"
      (PPO-clipped surrogate + sent_beta * KL_{sent_kl_kind}(pi || pi_ref) on the top-n
      tokens). Low-entropy set: the sent_low_entropy_ratio fraction of valid tokens with the
      lowest H; n = max(1, floor(|L| * sent_cov_ratio)).
    KL-Cov: the top max(1, floor(N * kl_cov_ratio)) tokens by covariance get
      + kl_cov_beta * |logp - old_logp|; all tokens -A r, unclipped.
    Clip-Cov: max(1, floor(N * clip_cov_ratio)) random tokens among the valid tokens that
      the ratio clip (clip_low, clip_high) leaves unclipped and with clip_cov_lb < cov <
      clip_cov_ub are dropped from the numerator; the surrogate is the PPO clip above (the
      paper's setting: clip_low = clip_high = 1, dual_clip_c None).
    20-Entropy: only the top ceil(entropy_top_ratio * N) valid tokens by H are kept.
    Any loss: + ref_kl_coef * KL_{ref_kl_kind}(pi || pi_ref) and - entropy_coef * H, both
      aggregated over all valid tokens.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = 3.0
    loss_agg_mode: str = "token-mean"
    horizon: int | None = None
    stapo_prob_threshold: float = 0.002
    stapo_entropy_quantile: float = 0.8
    sent_variant: str = "code"
    sent_low_entropy_ratio: float = 0.8
    sent_cov_ratio: float = 2e-4
    sent_beta: float = 0.1
    sent_high_mult: float = 2.0
    sent_low_mult: float = 0.5
    sent_kl_kind: str = "k3"
    kl_cov_ratio: float = 2e-4
    kl_cov_beta: float = 1.0
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    entropy_top_ratio: float = 0.2
    ref_kl_coef: float = 0.0
    ref_kl_kind: str = "k3"
    entropy_coef: float = 0.0

    def __post_init__(self):
        _check_choice("loss_agg_mode", self.loss_agg_mode, AGG_MODES)
        _check_choice("sent_variant", self.sent_variant, SENT_VARIANTS)
        _check_choice("sent_kl_kind", self.sent_kl_kind, KL_KINDS)
        _check_choice("ref_kl_kind", self.ref_kl_kind, KL_KINDS)
        for name in (
            "stapo_entropy_quantile",
            "sent_low_entropy_ratio",
            "sent_cov_ratio",
            "kl_cov_ratio",
            "clip_cov_ratio",
            "entropy_top_ratio",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"PolicyLossConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        for name in ("clip_low", "clip_high", "stapo_prob_threshold", "sent_beta", "sent_high_mult",
                     "sent_low_mult", "kl_cov_beta", "ref_kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"PolicyLossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(
                f"PolicyLossConfig.dual_clip_c must be > 1 or None, got {self.dual_clip_c}"
            )
        if self.horizon is not None and self.horizon < 1:
            raise ValueError(f"PolicyLossConfig.horizon must be >= 1 or None, got {self.horizon}")
        if self.clip_low > 1.0:
            raise ValueError(f"PolicyLossConfig.clip_low must be <= 1 (r is clipped at 1 - clip_low), got {self.clip_low}")
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(f"PolicyLossConfig.clip_cov_lb must be < clip_cov_ub={self.clip_cov_ub}, got {self.clip_cov_lb}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"PolicyLossConfig.{name}={value!r} is not one of {choices}")


class LossInputs(NamedTuple):
    """One batch of a policy loss: per-token arrays, all [B, T] (a pytree; slice its rows with
    ``jax.tree.map(lambda x: x[rows], inputs)``).

    logp: log pi_theta of the sampled tokens (gradients flow through it).
    old_logp: log-probs under the rollout policy.
    advantages: per-token advantages (one value per response, broadcast over T).
    mask: 1 on response tokens, 0 on padding.
    entropy: entropy of pi_theta at each position, or None if the loss does not need it.
    ref_logp: reference-policy log-probs, or None if the loss does not need them.
    """

    logp: chex.Array
    old_logp: chex.Array
    advantages: chex.Array
    mask: chex.Array
    entropy: chex.Array | None = None
    ref_logp: chex.Array | None = None


class Selection(NamedTuple):
    """A method's whole-batch token selection, [B, T] float32 each.

    numerator_mask: tokens whose loss enters the numerator.
    denominator_mask: tokens counted by the aggregation's denominator.
    coef: per-token penalty coefficient handed to the token loss.
    flagged: tokens the method masked or penalised (reported as a fraction).
    """

    numerator_mask: chex.Array
    denominator_mask: chex.Array
    coef: chex.Array
    flagged: chex.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PreparedLoss:
    """Whole-batch, stop-gradient part of a policy loss; every leaf has leading axis B.

    pg_weight: [B, T] weight of the per-token policy loss in the numerator.
    aux_weight: [B, T] weight of the reference-KL / entropy-bonus terms in the numerator.
    coef: [B, T] per-token penalty coefficient (SENT, KL-Cov).
    flagged: [B, T] 1 on tokens the method masked or penalised.
    denominator: [B] the whole-batch denominator, repeated on every row.
    row_share: [B] 1 / B, so that per-slice shares of whole-batch scalars add up to 1.
    """

    pg_weight: chex.Array
    aux_weight: chex.Array
    coef: chex.Array
    flagged: chex.Array
    denominator: chex.Array
    row_share: chex.Array

    def rows(self, index) -> "PreparedLoss":
        """The same rows as ``batch[index]`` (a slice, an index array or a boolean row mask)."""
        return jax.tree.map(lambda leaf: leaf[index], self)


TokenLossFn = Callable[
    [LossInputs, chex.Array, PolicyLossConfig], tuple[chex.Array, dict[str, chex.Array]]
]
SelectFn = Callable[[LossInputs, PolicyLossConfig, chex.PRNGKey | None], Selection]

# Knobs every loss reads (the aggregation and the two extra terms).
SHARED_KNOBS = ("loss_agg_mode", "horizon", "ref_kl_coef", "ref_kl_kind", "entropy_coef")
# Knobs of the PPO clip surrogate.
CLIP_KNOBS = ("clip_low", "clip_high", "dual_clip_c")


@dataclasses.dataclass(frozen=True)
class PolicyLossSpec:
    """A registered loss and what it declares about itself.

    name: the registry key (``algorithm.name``).
    token_loss: ``(inputs, coef, config) -> (loss [B, T], indicators)``, stage 2.
    select: ``(inputs, config, rng) -> Selection`` on the whole batch, stage 1 (None: every
      valid token, no penalty).
    flag_metric: name of the reported fraction of valid tokens that ``select`` flagged.
    paper: the method's reference (title and arXiv id), shown in docs and listings.
    knobs: ``config -> names`` of the ``PolicyLossConfig`` fields the loss reads besides
      ``SHARED_KNOBS`` (see ``config_errors``).
    selects_by_entropy: ``select`` ranks tokens by ``inputs.entropy``.
    needs_rng: ``select`` draws random numbers from the rng key.
    reads_reference: ``config -> bool``, whether ``token_loss`` reads ``inputs.ref_logp``
      (None: never). The reference KL term (``ref_kl_coef > 0``) needs it for every loss.
    """

    name: str
    token_loss: TokenLossFn
    select: SelectFn | None = None
    flag_metric: str | None = None
    paper: str = ""
    knobs: Callable[[PolicyLossConfig], tuple[str, ...]] = lambda config: ()
    selects_by_entropy: bool = False
    needs_rng: bool = False
    reads_reference: Callable[[PolicyLossConfig], bool] | None = None

    def needs_reference(self, config: PolicyLossConfig) -> bool:
        """Whether the loss needs reference log-probs (a frozen reference policy) under config."""
        reads = self.reads_reference is not None and self.reads_reference(config)
        return config.ref_kl_coef > 0 or reads

    def needs_entropy(self, config: PolicyLossConfig) -> bool:
        """Whether the loss needs the token entropy under config (selection or entropy bonus)."""
        return self.selects_by_entropy or config.entropy_coef > 0

    def config_errors(self, config: PolicyLossConfig) -> list[str]:
        """What cannot work with ``config``, before any compute: ``["field: why", ...]``.

        A method-specific field of another loss set away from its default would be silently
        ignored (e.g. ``clip_cov_ratio`` under ``kl_cov``); it is reported instead. The
        ``SHARED_KNOBS`` and the PPO ``CLIP_KNOBS`` are not checked: every config sets the
        clip, and the unclipped surrogates (kl_cov, sent "code") document that they ignore it.
        """
        defaults = PolicyLossConfig()
        read = set(SHARED_KNOBS) | set(CLIP_KNOBS) | set(self.knobs(config))
        own = sorted(set(self.knobs(config)) - set(CLIP_KNOBS))
        return [
            f"{field.name}: {getattr(config, field.name)!r} has no effect on policy loss "
            f"{self.name!r} (its own fields: {own}); leave it at its default "
            f"{getattr(defaults, field.name)!r}"
            for field in dataclasses.fields(PolicyLossConfig)
            if field.name not in read
            and getattr(config, field.name) != getattr(defaults, field.name)
        ]

    def check_selection_inputs(self, inputs: LossInputs, rng: chex.PRNGKey | None) -> None:
        """A clear ValueError if stage 1 (``select``) lacks an input the loss declares."""
        if self.selects_by_entropy and inputs.entropy is None:
            raise ValueError(f"policy loss {self.name!r} needs entropy (it selects tokens by it)")
        if self.needs_rng and rng is None:
            raise ValueError(
                f"policy loss {self.name!r} needs an rng key (it selects random tokens)"
            )

    def check_loss_inputs(self, inputs: LossInputs, config: PolicyLossConfig) -> None:
        """A clear ValueError if stage 2 (the per-token loss) lacks an input it needs."""
        if inputs.ref_logp is None and self.needs_reference(config):
            why = "ref_kl_coef > 0" if config.ref_kl_coef > 0 else "its config reads it"
            raise ValueError(f"policy loss {self.name!r} needs ref_logp ({why})")
        if inputs.entropy is None and config.entropy_coef > 0:
            raise ValueError(f"policy loss {self.name!r} needs entropy (entropy_coef > 0)")


_POLICY_LOSSES: dict[str, PolicyLossSpec] = {}


def register_policy_loss(
    name: str,
    *,
    select: SelectFn | None = None,
    flag_metric: str | None = None,
    paper: str = "",
    knobs: tuple[str, ...] | Callable[[PolicyLossConfig], tuple[str, ...]] = (),
    selects_by_entropy: bool = False,
    needs_rng: bool = False,
    reads_reference: Callable[[PolicyLossConfig], bool] | None = None,
) -> Callable[[TokenLossFn], TokenLossFn]:
    """Decorator registering ``token_loss(inputs, coef, config) -> (loss [B,T], indicators)``.

    ``indicators`` maps metric names to [B, T] per-token values whose mean over valid tokens
    is reported. The keywords fill the ``PolicyLossSpec`` (``knobs`` may be a fixed tuple).
    """
    knobs_of = knobs if callable(knobs) else (lambda config: tuple(knobs))

    def decorator(token_loss: TokenLossFn) -> TokenLossFn:
        if name in _POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} is already registered")
        _POLICY_LOSSES[name] = PolicyLossSpec(
            name=name,
            token_loss=token_loss,
            select=select,
            flag_metric=flag_metric,
            paper=paper,
            knobs=knobs_of,
            selects_by_entropy=selects_by_entropy,
            needs_rng=needs_rng,
            reads_reference=reads_reference,
        )
        return token_loss

    return decorator


def policy_loss_names() -> tuple[str, ...]:
    """Names of the registered policy losses."""
    return tuple(_POLICY_LOSSES)


def get_policy_loss(name: str) -> PolicyLossSpec:
    """The registered ``PolicyLossSpec`` of ``name`` (ValueError naming the choices)."""
    if name not in _POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; registered: {policy_loss_names()}")
    return _POLICY_LOSSES[name]


def _validated(name: str, inputs: LossInputs) -> LossInputs:
    """Checks the [B, T] shapes and converts everything to float32 (the mask to 0/1)."""
    shape = jnp.shape(inputs.logp)
    if len(shape) != 2:
        raise ValueError(f"policy loss {name!r}: logp must be [B, T], got shape {shape}")
    for key, value in inputs._asdict().items():
        if value is not None and jnp.shape(value) != shape:
            raise ValueError(
                f"policy loss {name!r}: {key} has shape {jnp.shape(value)}, expected {shape} "
                "(advantages are per token: broadcast them over T)"
            )
    converted = inputs._replace(mask=(jnp.asarray(inputs.mask) != 0))
    return jax.tree.map(lambda value: jnp.asarray(value, jnp.float32), converted)


def log_ratio(inputs: LossInputs) -> chex.Array:
    """logp - old_logp clamped to [-20, 20]."""
    return jnp.clip(inputs.logp - inputs.old_logp, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def clipped_surrogate(
    inputs: LossInputs, clip_low: float, clip_high: float, dual_clip_c: float | None
) -> tuple[chex.Array, dict[str, chex.Array]]:
    """PPO loss ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``, dual-clipped for A < 0.

    Returns the [B, T] loss and clip indicators: clip_frac_low (A < 0, r < 1 - clip_low),
    clip_frac_high (A > 0, r > 1 + clip_high), clip_frac_dual (A < 0 and the -A c cap is
    active).
    """
    ratio = jnp.exp(log_ratio(inputs))
    adv = inputs.advantages
    loss = jnp.maximum(-adv * ratio, -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high))
    indicators = {
        "clip_frac_low": ((adv < 0) & (ratio < 1.0 - clip_low)).astype(jnp.float32),
        "clip_frac_high": ((adv > 0) & (ratio > 1.0 + clip_high)).astype(jnp.float32),
    }
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual_active = (adv < 0) & (loss > cap)
        loss = jnp.where(dual_active, cap, loss)
        indicators["clip_frac_dual"] = dual_active.astype(jnp.float32)
    return loss, indicators


def penalised_surrogate(inputs: LossInputs, coef: chex.Array) -> chex.Array:
    """Unclipped ``-A r + coef * |logp - old_logp|`` (KL-Cov, SENT released code), [B, T]."""
    lr = log_ratio(inputs)
    return -inputs.advantages * jnp.exp(lr) + coef * jnp.abs(lr)


def prepare_policy_loss(
    name: str,
    inputs: LossInputs,
    *,
    config: PolicyLossConfig,
    rng: chex.PRNGKey | None = None,
) -> PreparedLoss:
    """Stage 1 on the whole update batch: selections, weights and denominator (no gradient).

    Args: as in ``policy_loss``.

    Returns:
      ``PreparedLoss`` (leaves [B, T] or [B]); slice its rows together with the batch.
    """
    spec = get_policy_loss(name)
    inputs = jax.lax.stop_gradient(_validated(name, inputs))
    spec.check_selection_inputs(inputs, rng)
    m = inputs.mask
    if spec.select is None:
        selection = Selection(m, m, jnp.zeros_like(m), jnp.zeros_like(m))
    else:
        selection = jax.lax.stop_gradient(spec.select(inputs, config, rng))
    mode, horizon = config.loss_agg_mode, config.horizon
    row_weights, pg_denominator = aggregation_weights(
        selection.denominator_mask, mode, horizon=horizon
    )
    denominator = jnp.where(pg_denominator > 0, pg_denominator, 1.0)
    aux_row_weights, aux_denominator = aggregation_weights(m, mode, horizon=horizon)
    batch = m.shape[0]
    return PreparedLoss(
        pg_weight=row_weights * selection.numerator_mask,
        aux_weight=aux_row_weights * safe_divide(denominator, aux_denominator),
        coef=selection.coef,
        flagged=selection.flagged,
        denominator=jnp.full((batch,), denominator, jnp.float32),
        row_share=jnp.full((batch,), 1.0 / batch, jnp.float32),
    )


def _weighted_sum(weights: chex.Array, values: chex.Array) -> chex.Array:
    """sum(weights * values) with exactly zero gradient where the weight is 0."""
    return jnp.sum(weights * jnp.where(weights != 0, values, 0.0))


def policy_loss_terms(
    name: str,
    prepared: PreparedLoss,
    inputs: LossInputs,
    *,
    config: PolicyLossConfig,
) -> tuple[chex.Array, dict[str, tuple[chex.Array, chex.Array]]]:
    """Stage 2 on a slice of rows: ``(numerator, metric_sums)``.

    Args:
      name: the registered loss.
      prepared: the same rows of ``prepare_policy_loss``'s result on the whole batch.
      inputs: ``LossInputs`` of [b, T] rows of the batch.
      config: the same config as for ``prepare_policy_loss``.

    Returns:
      numerator: float32 scalar; loss = sum of numerators / ``prepared.denominator[0]``.
      metric_sums: {name: (sum, count)} float32 scalars; add them across slices and call
        ``metric_means``.
    """
    spec = get_policy_loss(name)
    inputs = _validated(name, inputs)
    spec.check_loss_inputs(inputs, config)
    if prepared.pg_weight.shape != inputs.logp.shape:
        raise ValueError(
            f"policy loss {name!r}: prepared rows have shape "
            f"{prepared.pg_weight.shape}, the inputs {inputs.logp.shape}"
        )
    aux_loss = jnp.zeros_like(inputs.logp)
    if config.ref_kl_coef:
        aux_loss += config.ref_kl_coef * kl_estimate(
            inputs.logp, inputs.ref_logp, config.ref_kl_kind
        )
    if config.entropy_coef:
        aux_loss -= config.entropy_coef * inputs.entropy
    token_loss, indicators = spec.token_loss(inputs, prepared.coef, config)
    pg_numerator = _weighted_sum(prepared.pg_weight, token_loss)
    numerator = pg_numerator + _weighted_sum(prepared.aux_weight, aux_loss)
    metric_sums = _metric_sums(spec, prepared, inputs, indicators, config, pg_numerator)
    return numerator, metric_sums


def _metric_sums(spec, prepared, inputs, indicators, config, pg_numerator):
    """{name: (sum, count)}: per-token means over valid tokens, and the pg term's value."""
    m = inputs.mask
    count = jnp.sum(m)
    per_token = dict(indicators)
    per_token["approx_kl"] = kl_estimate(inputs.old_logp, inputs.logp, "k3")
    per_token["ratio"] = jnp.exp(log_ratio(inputs))
    if inputs.ref_logp is not None:
        per_token["ref_kl"] = kl_estimate(inputs.logp, inputs.ref_logp, config.ref_kl_kind)
    if spec.flag_metric is not None:
        per_token[spec.flag_metric] = prepared.flagged
    sums = {key: (_weighted_sum(m, value), count) for key, value in per_token.items()}
    sums["pg_loss"] = (pg_numerator / prepared.denominator[0], jnp.sum(prepared.row_share))
    return jax.lax.stop_gradient(sums)


def metric_means(metric_sums: dict[str, tuple[chex.Array, chex.Array]]) -> dict[str, chex.Array]:
    """Turns (accumulated) ``{name: (sum, count)}`` into ``{name: sum / count}`` (0 if empty)."""
    return {key: safe_divide(total, count) for key, (total, count) in metric_sums.items()}


def policy_loss(
    name: str,
    inputs: LossInputs,
    *,
    config: PolicyLossConfig,
    rng: chex.PRNGKey | None = None,
) -> tuple[chex.Array, dict[str, chex.Array]]:
    """A registered policy loss on one batch: ``(loss, metrics)``.

    Args:
      name: a registered loss: ppo_clip, stapo, sent, kl_cov, clip_cov, entropy_topk.
      inputs: ``LossInputs``, [B, T] arrays; ``entropy`` where ``spec.needs_entropy(config)``,
        ``ref_logp`` where ``spec.needs_reference(config)`` (``spec = get_policy_loss(name)``).
      config: ``PolicyLossConfig``.
      rng: PRNG key, where ``spec.needs_rng`` (clip_cov).

    Returns:
      float32 scalar loss (minimised) and a dict of float32 scalar metrics.
    """
    prepared = prepare_policy_loss(name, inputs, config=config, rng=rng)
    numerator, metric_sums = policy_loss_terms(name, prepared, inputs, config=config)
    return numerator / prepared.denominator[0], metric_means(metric_sums)
