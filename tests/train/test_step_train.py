"""The pure train step: sharded == single device, micro-batched == whole batch, non-finite skip
(optax.apply_if_finite) and its counts, and response log-probs against the model's own full logits."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from entropy_rl import losses
from entropy_rl.model import Qwen, tiny_config
from entropy_rl.parallel import MeshConfig, make_mesh, shard_model
from entropy_rl.train.step import (StepConfig, UpdateBatch, create_train_state, make_train_step, non_finite_counts,
                                   response_logprobs, skip_non_finite)

B, P, T, V = 8, 5, 6, 64


def _one_device_mesh():
    return make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])


def _model(mesh, **config_overrides):
    config = tiny_config(vocab_size=V, num_hidden_layers=1, **config_overrides)
    return shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh)


def _batch(seed=0, *, ref=False):
    rng = np.random.default_rng(seed)
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[::3, :2] = 0  # some left padding
    lengths = rng.integers(1, T + 1, size=B)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    old_logp = np.where(mask, rng.uniform(-4.0, -0.01, (B, T)), 0).astype(np.float32)
    return UpdateBatch(
        prompt_tokens=(rng.integers(1, V, (B, P)) * prompt_mask).astype(np.int32),
        prompt_mask=prompt_mask,
        tokens=(rng.integers(1, V, (B, T)) * mask).astype(np.int32),
        mask=mask,
        advantages=rng.normal(size=B).astype(np.float32),
        old_logp=old_logp,
        ref_logp=(old_logp - 0.1).astype(np.float32) if ref else None,
    )


def _run(mesh, config, batch, optimizer=optax.sgd(1.0), model=None):
    optimizer = skip_non_finite(optimizer)
    state = create_train_state(model or _model(mesh), optimizer, mesh)
    step = make_train_step(state, mesh, optimizer=optimizer, schedule=optax.constant_schedule(1.0), config=config)
    new_state, metrics = step(state, batch, jax.random.key(3))
    return jax.device_get(new_state.params), jax.device_get(metrics), new_state


def _assert_params_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.slow
def test_response_logprobs_match_full_logits():
    mesh = _one_device_mesh()
    model = _model(mesh)
    batch = _batch()
    graphdef, params = nnx.split(model)
    logp, entropy = response_logprobs(graphdef, params, batch, temperature=0.7, chunk_size=16)
    # Independent: full logits of prompt + response, position P + j - 1 predicts token j.
    ids = np.concatenate([batch.prompt_tokens, batch.tokens], 1)
    attn = np.concatenate([batch.prompt_mask, batch.mask], 1)
    logits = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, ids, attn), np.float64)[:, P - 1:-1] / 0.7
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want_logp = np.take_along_axis(log_probs, batch.tokens[..., None], -1)[..., 0]
    want_entropy = -(np.exp(log_probs) * log_probs).sum(-1)
    valid = batch.mask == 1
    np.testing.assert_allclose(np.asarray(logp)[valid], want_logp[valid], atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy)[valid], want_entropy[valid], atol=1e-5)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step():
    config = StepConfig("stapo", losses.PolicyLossConfig(clip_high=0.28, stapo_prob_threshold=0.05),
                        temperature=1.0)
    batch = _batch()
    single, single_metrics, _ = _run(_one_device_mesh(), config, batch)
    sharded, sharded_metrics, state = _run(make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)), config, batch)
    assert len(state.params["layers"][0]["mlp"]["up_proj"][...].sharding.device_set) == 8
    _assert_params_close(single, sharded, atol=1e-6)
    for key in single_metrics:
        np.testing.assert_allclose(single_metrics[key], sharded_metrics[key], atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_sharded_blockwise_attention_step_equals_dense_step():
    """Prompt + response = 11 tokens in blocks of 4, rematerialised, on data=2 x fsdp=2 x
    tensor=2, against the dense-attention step on one device."""
    config = StepConfig("stapo", losses.PolicyLossConfig(clip_high=0.28, stapo_prob_threshold=0.05),
                        temperature=1.0)
    batch = _batch()
    dense, dense_metrics, _ = _run(_one_device_mesh(), config, batch)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    blockwise, blockwise_metrics, _ = _run(mesh, config, batch,
                                           model=_model(mesh, attention_block_size=4, remat=True))
    _assert_params_close(dense, blockwise, atol=1e-6)
    for key in dense_metrics:
        np.testing.assert_allclose(dense_metrics[key], blockwise_metrics[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("agg_mode", losses.AGG_MODES)
@pytest.mark.slow
def test_micro_batches_equal_whole_batch(agg_mode):
    mesh = _one_device_mesh()
    loss_config = losses.PolicyLossConfig(loss_agg_mode=agg_mode, stapo_prob_threshold=0.05, ref_kl_coef=0.01,
                                          entropy_coef=0.01)
    batch = _batch(1, ref=True)
    whole, whole_metrics, _ = _run(mesh, StepConfig("stapo", loss_config), batch)
    micro, micro_metrics, _ = _run(mesh, StepConfig("stapo", loss_config, num_micro_batches=4), batch)
    _assert_params_close(whole, micro, atol=1e-6)
    for key in whole_metrics:
        np.testing.assert_allclose(whole_metrics[key], micro_metrics[key], atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_non_finite_updates_are_skipped_and_counted_until_a_finite_one():
    mesh = _one_device_mesh()
    finite = _batch(2)
    nan_batch = finite.replace(advantages=np.full((B,), np.nan, np.float32))
    model = _model(mesh)
    before = jax.device_get(nnx.split(model)[1])
    optimizer = skip_non_finite(optax.adamw(optax.linear_schedule(1e-2, 2e-2, 10)))
    state = create_train_state(model, optimizer, mesh)
    step = make_train_step(state, mesh, optimizer=optimizer, schedule=optax.linear_schedule(1e-2, 2e-2, 10),
                           config=StepConfig("ppo_clip", losses.PolicyLossConfig()))
    counts = []
    for batch in (nan_batch, nan_batch, finite, nan_batch):
        state, metrics = step(state, batch, jax.random.key(3))
        counts.append((float(metrics["skipped"]), non_finite_counts(state), float(metrics["lr"])))
        if len(counts) == 2:  # two skipped updates: nothing moved, the optimizer state is finite
            _assert_params_close(before, jax.device_get(state.params), atol=0)
            assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.opt_state))
    # (skipped, (in a row, in total)), and lr: the schedule counts applied updates only.
    assert [c[:2] for c in counts] == [(1.0, (1, 1)), (1.0, (2, 2)), (0.0, (0, 2)), (1.0, (1, 3))]
    np.testing.assert_allclose([c[2] for c in counts], [1e-2, 1e-2, 1e-2, 1.1e-2], rtol=1e-6)
    assert int(state.step) == 4
    with pytest.raises(TypeError, match="skip_non_finite"):
        create_train_state(_model(mesh), optax.adamw(1e-2), mesh)


@pytest.mark.slow
def test_bfloat16_first_moment_halves_it_and_follows_the_float32_update():
    """optimizer.mu_dtype=bfloat16: Adam's first moment is stored in bfloat16, the second
    moment and the master weights stay float32, and the update matches float32 moments to
    bfloat16 rounding of the first moment."""
    from entropy_rl.train.config import OptimizerConfig
    from entropy_rl.train.step import make_optimizer

    mesh = _one_device_mesh()
    runs = {}
    for mu_dtype in (None, "bfloat16"):
        optimizer, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0, mu_dtype=mu_dtype), 10)
        state = create_train_state(_model(mesh), optimizer, mesh)
        step = make_train_step(state, mesh, optimizer=optimizer, schedule=schedule,
                               config=StepConfig("ppo_clip", losses.PolicyLossConfig()))
        for seed in (0, 1):
            state, _ = step(state, _batch(seed), jax.random.key(3))
        adam = next(s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu"))
        runs[mu_dtype] = (jax.device_get(state.params), adam)
    (params32, adam32), (params16, adam16) = runs[None], runs["bfloat16"]
    assert {x.dtype for x in jax.tree.leaves(adam32.mu)} == {np.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(adam16.mu)} == {np.dtype(jax.numpy.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(adam16.nu)} | {x.dtype for x in jax.tree.leaves(params16)} == {np.dtype("float32")}
    for mu32, mu16 in zip(jax.tree.leaves(adam32.mu), jax.tree.leaves(adam16.mu)):
        # two bfloat16 roundings (8 bits), relative to the leaf's scale (updates cancel in places)
        np.testing.assert_allclose(np.asarray(mu16, np.float32), np.asarray(mu32), rtol=0,
                                   atol=2 * 2**-8 * float(np.abs(mu32).max()))
    # two steps of lr 1e-3: the parameters agree to a small fraction of one step's size
    _assert_params_close(params16, params32, atol=2e-5)
