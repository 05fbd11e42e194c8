"""Every policy loss against the numpy reference, exact micro-batch accumulation for every
loss and aggregation mode, zero gradients on padding and unselected tokens, STAPO == DAPO on
kept tokens, jit == eager, and clear errors on bad input.

Compilation dominates the cost on CPU, so each loss is compiled once (all four aggregation
modes, whole batch and micro-batches, in one program) and its results are shared by tests.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl.losses import (
    AGG_MODES,
    LossInputs,
    PolicyLossConfig,
    metric_means,
    policy_loss,
    policy_loss_names,
    policy_loss_terms,
    prepare_policy_loss,
    register_policy_loss,
)
from tests.losses import numpy_reference
from tests.losses.fast_jit import fast_jit

LOSSES = ("ppo_clip", "stapo", "entropy_topk", "kl_cov", "clip_cov", "sent", "sent_paper")
# Ratios large enough that every method selects several of the ~45 valid tokens.
CONFIG = PolicyLossConfig(
    clip_low=0.2,
    clip_high=0.28,
    stapo_prob_threshold=0.05,
    stapo_entropy_quantile=0.8,
    sent_cov_ratio=0.1,
    kl_cov_ratio=0.1,
    clip_cov_ratio=0.1,
    clip_cov_lb=-1.0,
    clip_cov_ub=5.0,
    ref_kl_coef=0.05,
    entropy_coef=0.01,
)
MICRO_BATCHES = 3  # of 2 rows each, accumulated with lax.scan as a trainer would
RNG = jax.random.key(0)


def loss_and_config(loss, mode="token-mean", **overrides):
    """(registered name, config) for a test loss in an aggregation mode.

    token-mean runs without the reference KL, so that its logp gradient is the policy term's
    alone (the entropy bonus has no logp gradient); other modes add it.
    """
    overrides = {"loss_agg_mode": mode, "horizon": 12, **overrides}
    if mode == "token-mean":
        overrides.setdefault("ref_kl_coef", 0.0)
    if loss == "sent_paper":
        overrides["sent_variant"] = "paper"
    return loss.removesuffix("_paper"), dataclasses.replace(CONFIG, **overrides)


def random_batch(seed=0, batch=6, length=10):
    """A [6, 10] batch with an empty row, a full row and huge garbage values on padding."""
    rng = np.random.default_rng(seed)
    logp = 2 * np.log(rng.uniform(0.07, 1.0, (batch, length)))
    mask = (rng.random((batch, length)) > 0.25).astype(np.float32)
    mask[1], mask[2] = 0.0, 1.0
    arrays = dict(
        logp=logp,
        old_logp=logp + 0.3 * rng.normal(size=(batch, length)),
        mask=mask,
        advantages=np.repeat(np.abs(rng.normal(size=(batch, 1))), length, axis=1)
        * np.where(np.arange(batch) % 2, -1.0, 1.0)[:, None],  # even rows positive
        entropy=rng.uniform(0.0, 3.0, (batch, length)),
        ref_logp=logp + 0.2 * rng.normal(size=(batch, length)),
    )
    garbage = dict(logp=1e30, old_logp=-1e30, advantages=1e30, entropy=-1e30, ref_logp=-1e30)
    return {
        k: jnp.asarray(np.where(mask > 0, v, garbage.get(k, 0.0)), jnp.float32)
        for k, v in arrays.items()
    }


BATCH = random_batch()


def _value_and_grads(name, config, batch):
    """Whole batch and micro-batch-accumulated ((loss, metrics), (d/dlogp, d/dentropy)), and
    the prepared flagged tokens."""

    def whole(logp, entropy):
        inputs = LossInputs(**{**batch, "logp": logp, "entropy": entropy})
        return policy_loss(name, inputs, config=config, rng=RNG)

    def accumulated(logp, entropy):
        full = LossInputs(**{**batch, "logp": logp, "entropy": entropy})
        prepared = prepare_policy_loss(name, full, config=config, rng=RNG)
        def split(x):
            return x.reshape((MICRO_BATCHES, -1) + x.shape[1:])

        def step(total, rows):
            rows_prepared, rows_batch = rows
            numerator, sums = policy_loss_terms(name, rows_prepared, rows_batch, config=config)
            return total + numerator / prepared.denominator[0], sums

        loss, sums = jax.lax.scan(step, 0.0, jax.tree.map(split, (prepared, full)))
        return loss, (metric_means(jax.tree.map(lambda x: x.sum(0), sums)), prepared.flagged)

    def differentiate(fn):
        return jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(
            batch["logp"], batch["entropy"]
        )
    whole_result = differentiate(whole)
    (value, (metrics, flagged)), grads = differentiate(accumulated)
    return whole_result, ((value, metrics), grads), flagged


@functools.cache
def results(loss):
    """{mode: (whole, accumulated, flagged)} of a test loss on BATCH, one compilation."""
    run = fast_jit(
        lambda batch: {
            mode: _value_and_grads(*loss_and_config(loss, mode), batch) for mode in AGG_MODES
        }
    )
    return jax.device_get(run(BATCH))


@functools.partial(fast_jit, static_argnums=(0, 1))
def jit_policy_loss(name, config, batch, rng):
    return policy_loss(name, LossInputs(**batch), config=config, rng=rng)


@functools.partial(fast_jit, static_argnums=(0, 1))
def jit_logp_grad(name, config, batch):
    def loss(logp):
        return policy_loss(name, LossInputs(**{**batch, "logp": logp}), config=config)[0]

    return jax.grad(loss)(batch["logp"])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.slow
def test_matches_numpy_reference_every_mode(loss):
    mask = np.asarray(BATCH["mask"]) > 0
    for mode, (((value, metrics), _), _, flagged) in results(loss).items():
        name, config = loss_and_config(loss, mode)
        numerator_mask = mask * (1.0 - flagged) if name == "clip_cov" else None  # random drop
        expected = numpy_reference.policy_loss(name, BATCH, config, numerator_mask)
        np.testing.assert_allclose(value, expected, rtol=2e-6, atol=1e-7, err_msg=mode)
    kl = numpy_reference.k3(np.asarray(BATCH["old_logp"]), np.asarray(BATCH["logp"]))
    np.testing.assert_allclose(metrics["approx_kl"], kl[mask].mean(), rtol=1e-5)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.slow
def test_microbatches_accumulate_exactly_every_mode(loss):
    for mode, (whole, accumulated, _) in results(loss).items():
        ((value, metrics), grads), ((acc_value, acc_metrics), acc_grads) = whole, accumulated
        np.testing.assert_allclose(acc_value, value, rtol=1e-6, err_msg=mode)
        for grad, acc_grad in zip(grads, acc_grads):
            assert np.abs(grad).max() > 0
            np.testing.assert_allclose(
                acc_grad, grad, rtol=1e-6, atol=1e-6 * np.abs(grad).max(), err_msg=mode
            )
        assert metrics.keys() == acc_metrics.keys()
        for key in metrics:
            np.testing.assert_allclose(
                acc_metrics[key], metrics[key], rtol=1e-6, atol=1e-7, err_msg=f"{mode} {key}"
            )


@pytest.mark.parametrize("loss", LOSSES)
def test_padding_and_unselected_tokens_get_exactly_zero_gradient(loss):
    mask = np.asarray(BATCH["mask"])
    for mode, ((_, (logp_grad, entropy_grad)), _, flagged) in results(loss).items():
        for grad in (logp_grad, entropy_grad):
            assert np.all(np.isfinite(grad))
            np.testing.assert_array_equal(grad[mask == 0], 0.0, err_msg=mode)
        assert np.all(entropy_grad[mask > 0] != 0)  # the entropy bonus, on every valid token
    whole, _, flagged = results(loss)["token-mean"]  # no reference KL: pg gradient only
    logp_grad = whole[1][0]
    assert np.any(logp_grad != 0)
    if loss in ("stapo", "entropy_topk", "clip_cov"):  # these drop their flagged tokens
        assert 0 < flagged.sum() < mask.sum()
        np.testing.assert_array_equal(logp_grad[flagged > 0], 0.0)
        flag_metric = {
            "stapo": "spurious_fraction",
            "entropy_topk": "masked_fraction",
            "clip_cov": "dropped_fraction",
        }[loss]
        np.testing.assert_allclose(whole[0][1][flag_metric], flagged.sum() / mask.sum(), rtol=1e-6)


def test_stapo_equals_dapo_on_kept_tokens():
    config = dataclasses.replace(CONFIG, ref_kl_coef=0.0, entropy_coef=0.0)
    mask = np.asarray(BATCH["mask"])
    clean = {k: np.where(mask > 0, v, 0.0) for k, v in jax.device_get(BATCH).items()}
    keep, _, _ = numpy_reference.selection("stapo", clean, config)
    assert 0 < (mask - keep).sum()
    dapo_batch = {**BATCH, "mask": jnp.asarray(keep, jnp.float32)}

    @fast_jit
    def both():
        out = {}
        for mode in AGG_MODES:
            mode_config = dataclasses.replace(config, loss_agg_mode=mode)
            for name, batch in (("stapo", BATCH), ("ppo_clip", dapo_batch)):
                out[mode, name] = jax.value_and_grad(
                    lambda lp: policy_loss(
                        name, LossInputs(**{**batch, "logp": lp}), config=mode_config
                    )[0]
                )(batch["logp"])
        return out

    out = both()
    for mode in AGG_MODES:
        (stapo_value, stapo_grad), (dapo_value, dapo_grad) = (
            out[mode, "stapo"],
            out[mode, "ppo_clip"],
        )
        np.testing.assert_allclose(stapo_value, dapo_value, rtol=1e-6, err_msg=mode)
        np.testing.assert_allclose(stapo_grad, dapo_grad, rtol=1e-6, err_msg=mode)


def test_stapo_hand_computed():
    # Tokens: (A>0, p=0.001, H=0.1) spurious; (A>0, p=0.5) kept; (A<0, p=0.001) kept;
    # (A>0, p=0.001, H=2.0 above the 0.8 quantile) kept. logp = old_logp, so l = -A.
    logp = jnp.log(jnp.array([[0.001, 0.5, 0.001, 0.001]]))
    batch = dict(
        logp=logp,
        old_logp=logp,
        advantages=jnp.array([[1.0, 2.0, -3.0, 4.0]]),
        mask=jnp.ones((1, 4)),
        entropy=jnp.array([[0.1, 0.2, 0.3, 2.0]]),
    )
    loss, metrics = jit_policy_loss("stapo", PolicyLossConfig(), batch, None)
    np.testing.assert_allclose(loss, (-2.0 + 3.0 - 4.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["spurious_fraction"], 0.25)


def test_kl_cov_hand_computed_value_and_gradient():
    # logp (-1, -2, -3), A (1, 1, -1): means -2, 1/3 -> cov (2/3, 0, 4/3); n = max(1, 0) = 1:
    # token 2 gets + |logp - old_logp| = |-0.1|.
    logp = jnp.array([[-1.0, -2.0, -3.0]])
    batch = dict(
        logp=logp,
        old_logp=logp - jnp.array([[0.1, 0.2, -0.1]]),
        advantages=jnp.array([[1.0, 1.0, -1.0]]),
        mask=jnp.ones((1, 3)),
    )
    config = PolicyLossConfig(kl_cov_ratio=2e-4, kl_cov_beta=1.0)
    loss, metrics = jit_policy_loss("kl_cov", config, batch, None)
    ratio = np.exp([0.1, 0.2, -0.1])
    np.testing.assert_allclose(loss, (-ratio[0] - ratio[1] + ratio[2] + 0.1) / 3, rtol=1e-6)
    np.testing.assert_allclose(metrics["penalised_fraction"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(
        jit_logp_grad("kl_cov", config, batch)[0],
        [-ratio[0] / 3, -ratio[1] / 3, (ratio[2] - 1) / 3],
        rtol=1e-6,
    )


def test_sent_code_hand_computed():
    # 5 valid tokens; the low-entropy set is the floor(0.8 * 5) = 4 lowest H (tokens 0-3).
    # Means over it: logp -2.5, A 0 -> cov (1.5, -0.5, -0.5, 1.5); n = max(1, floor(4 * 0.25))
    # = 1: token 0 (largest, ties by position) gets 0.1 * 2, token 1 (smallest) 0.1 * 0.5.
    logp = jnp.array([[-1.0, -2.0, -3.0, -4.0, -0.5]])
    batch = dict(
        logp=logp,
        old_logp=logp,
        advantages=jnp.array([[1.0, -1.0, 1.0, -1.0, 5.0]]),
        mask=jnp.ones((1, 5)),
        entropy=jnp.array([[0.1, 0.2, 0.3, 0.4, 3.0]]),
    )
    prepared = fast_jit(
        lambda b: prepare_policy_loss(
            "sent", LossInputs(**b), config=PolicyLossConfig(sent_cov_ratio=0.25, sent_beta=0.1)
        )
    )(batch)
    np.testing.assert_allclose(prepared.coef, [[0.2, 0.05, 0.0, 0.0, 0.0]], rtol=1e-6)


def test_clip_cov_random_drop_respects_candidates_and_key():
    name, config = loss_and_config("clip_cov")
    batch = jax.device_get(BATCH)
    mask, adv = batch["mask"], np.where(batch["mask"] > 0, batch["advantages"], 0)
    ratio = np.exp(np.clip(batch["logp"] - batch["old_logp"], -20, 20))
    clipped = -adv * np.clip(ratio, 1 - config.clip_low, 1 + config.clip_high) > -adv * ratio
    cov = numpy_reference.covariance(np.where(mask > 0, batch["logp"], 0), adv, mask)
    candidates = (mask > 0) & ~clipped & (cov > config.clip_cov_lb) & (cov < config.clip_cov_ub)
    count = min(max(1, int(mask.sum() * config.clip_cov_ratio)), candidates.sum())
    keys = jax.random.split(jax.random.key(1), 3)
    keys = jnp.concatenate([keys[:1], keys])
    drops = fast_jit(
        jax.vmap(
            lambda key: prepare_policy_loss(name, LossInputs(**BATCH), config=config, rng=key).flagged
        )
    )(keys)
    for dropped in np.asarray(drops):
        assert dropped.sum() == count and np.all(candidates[dropped > 0])
    np.testing.assert_array_equal(drops[0], drops[1])
    assert any(not np.array_equal(drops[0], d) for d in drops[2:])


def test_jit_and_eager_agree():
    name, config = loss_and_config("ppo_clip")
    eager_value, eager_metrics = policy_loss(name, LossInputs(**BATCH), config=config)
    jit_value, jit_metrics = jit_policy_loss(name, config, BATCH, None)
    np.testing.assert_allclose(eager_value, jit_value, rtol=1e-6)
    for key in eager_metrics:
        np.testing.assert_allclose(eager_metrics[key], jit_metrics[key], rtol=1e-6, atol=1e-7)


def test_bf16_inputs_give_float32():
    batch = {k: v.astype(jnp.bfloat16) for k, v in random_batch(8).items()}
    value, metrics = jit_policy_loss("ppo_clip", CONFIG, batch, None)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert all(v.dtype == jnp.float32 for v in metrics.values())


def test_registry_new_loss_is_one_function():
    name = "test_negated_reinforce"
    if name not in policy_loss_names():

        @register_policy_loss(name)
        def negated(inputs, coef, config):
            return -inputs.advantages * inputs.logp, {}

    value, _ = jit_policy_loss(name, PolicyLossConfig(), BATCH, None)
    batch = {k: np.where(BATCH["mask"], v, 0.0) for k, v in jax.device_get(BATCH).items()}
    expected = numpy_reference.aggregate(
        -batch["advantages"] * batch["logp"], batch["mask"], batch["mask"], "token-mean"
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss(name)(lambda inputs, coef, config: None)


def test_bad_input_raises_clear_errors():
    def call(name, config=CONFIG, rng=None, **changes):
        return jit_policy_loss(name, config, {**BATCH, **changes}, rng)

    with pytest.raises(ValueError, match="unknown policy loss 'ppo'"):
        call("ppo")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        PolicyLossConfig(loss_agg_mode="sum")
    with pytest.raises(ValueError, match="sent_variant"):
        PolicyLossConfig(sent_variant="released")
    with pytest.raises(ValueError, match="dual_clip_c"):
        PolicyLossConfig(dual_clip_c=0.5)
    with pytest.raises(ValueError, match=r"logp must be \[B, T\]"):
        call("ppo_clip", logp=BATCH["logp"][0])
    with pytest.raises(ValueError, match="advantages has shape"):
        call("ppo_clip", advantages=BATCH["advantages"][:, :1])
    with pytest.raises(ValueError, match="needs entropy"):
        call("stapo", entropy=None)
    with pytest.raises(ValueError, match="needs an rng key"):
        call("clip_cov")
    with pytest.raises(ValueError, match=r"needs ref_logp \(ref_kl_coef > 0\)"):
        call("ppo_clip", ref_logp=None)
    paper = dataclasses.replace(CONFIG, sent_variant="paper", ref_kl_coef=0.0)
    with pytest.raises(ValueError, match=r"'sent' needs ref_logp \(its config reads it\)"):
        call("sent", paper, ref_logp=None)
    with pytest.raises(ValueError, match=r"needs entropy \(entropy_coef > 0\)"):
        call("ppo_clip", entropy=None)
