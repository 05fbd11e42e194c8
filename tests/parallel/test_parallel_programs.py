"""The compiled programs run under the run's mesh: the model's sharding constraints are in
the train step's jaxpr, and on 8 simulated CPU devices they cut the step's collective bytes;
the micro-batched no-grad forward equals the whole-batch one."""

import pytest
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropy_rl import losses
from entropy_rl.model import Qwen, tiny_config
from entropy_rl.parallel import CPU_COMPILER_OPTIONS, MeshConfig, compiler_options, make_mesh, shard_model
from entropy_rl.plan import collective_bytes, count_sharding_constraints
from entropy_rl.train.step import (StepConfig, UpdateBatch, create_train_state, make_no_grad_logprobs,
                                   make_train_step, response_logprobs, skip_non_finite)

B, P, T = 16, 4, 12


def _batch(vocab):
    rng = np.random.default_rng(0)
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, (B, 1))).astype(np.int32)
    return UpdateBatch(prompt_tokens=rng.integers(1, vocab, (B, P)).astype(np.int32),
                       prompt_mask=np.ones((B, P), np.int32), tokens=rng.integers(1, vocab, (B, T)).astype(np.int32),
                       mask=mask, advantages=rng.normal(size=B).astype(np.float32),
                       old_logp=np.full((B, T), -1.0, np.float32))


@pytest.mark.slow
def test_train_step_traced_under_mesh_has_constraints_and_fewer_collective_bytes():
    mesh = make_mesh(MeshConfig(fsdp=8))
    config = tiny_config(num_hidden_layers=1, vocab_size=128, hidden_size=32, intermediate_size=64)
    optimizer = skip_non_finite(optax.sgd(1e-3))
    state = create_train_state(shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh), optimizer, mesh)
    step = make_train_step(state, mesh, optimizer=optimizer, schedule=optax.constant_schedule(1e-3),
                           config=StepConfig("ppo_clip", losses.PolicyLossConfig()))
    args = (state, _batch(config.vocab_size), jax.random.key(0))
    # Under the mesh every `constrain` is a sharding constraint; the bare jit (the step as it
    # was traced before) has none.
    assert count_sharding_constraints(step.trace(*args).jaxpr) >= 4
    assert count_sharding_constraints(step.jitted.trace(*args).jaxpr) == 0
    constrained = collective_bytes(step.lower(*args).compile().as_text())
    unconstrained = collective_bytes(step.jitted.lower(*args).compile().as_text())
    print(f"collective bytes: {constrained} with the constraints, {unconstrained} without")
    assert 0 < constrained < 0.5 * unconstrained


@pytest.mark.slow
def test_micro_batched_no_grad_logprobs_equal_whole_batch_forward():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    config = tiny_config(num_hidden_layers=1)
    model = shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh)
    graphdef, params = nnx.split(model)
    batch = _batch(config.vocab_size)
    expected = jax.jit(lambda p, b: response_logprobs(graphdef, p, b))(params, batch)
    forward = make_no_grad_logprobs(graphdef, mesh, num_micro_batches=4)
    assert count_sharding_constraints(forward.trace(params, batch).jaxpr) > 0
    for got, want in zip(forward(params, batch), expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)


def test_compiler_options_only_on_cpu():
    assert compiler_options("cpu") == CPU_COMPILER_OPTIONS
    assert compiler_options("tpu") == {} and compiler_options("gpu") == {}


def test_collective_bytes_reads_hlo_shapes():
    hlo = ("%ag = f32[8,64]{1,0} all-gather(f32[1,64]{1,0} %p), dimensions={0}\n"
           "%ar = (bf16[10]{0}, s32[]) all-reduce-start(%a, %b), to_apply=%add\n"
           "%add = f32[4]{0} add(f32[4]{0} %x, f32[4]{0} %y)\n")
    assert collective_bytes(hlo) == 8 * 64 * 4 + 10 * 2 + 4
    jaxpr = jax.make_jaxpr(lambda x: jax.lax.with_sharding_constraint(jnp.sin(x), jax.sharding.PartitionSpec()))
    with jax.set_mesh(make_mesh(MeshConfig(fsdp=8))):
        assert count_sharding_constraints(jaxpr(jnp.ones(8))) == 1
