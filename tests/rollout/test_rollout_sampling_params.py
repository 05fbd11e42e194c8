"""The sampler's parameter view (`entropy_rl.rollout.params`) on 8 simulated devices
(fsdp=4 x tensor=2), a bfloat16-compute policy with float32 master weights: the view's
values, placement and freshness; rollout log-probs vs the train-side recomputation with the
view's weights; the train-side old log-probs untouched; the decode step's collectives."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from entropy_rl.model import Qwen
from entropy_rl.model.config import QwenConfig
from entropy_rl.parallel import MeshConfig, batch_sharding, make_mesh, shard_model
from entropy_rl.plan import collective_bytes
from entropy_rl.rollout import SamplingConfig, generate
from entropy_rl.rollout.decoding import stop_token_array
from entropy_rl.rollout.params import sampling_params
from entropy_rl.rollout.sampler import rollout_programs
from entropy_rl.train.step import UpdateBatch, no_grad_logprobs_program, response_logprobs

CONFIG = QwenConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, dtype="bfloat16", param_dtype="float32")
PROMPTS = [[5, 17, 99, 3], [42], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [1, 2]]
# Plain temperature sampling: the train-side log-probs (no top-k / top-p) are the sampler's.
SAMPLED = SamplingConfig(max_new_tokens=12, temperature=0.7, n=2, stop_token_ids=(3,), prompt_bucket=16,
                         response_bucket=8, decode_segments=1, scheduler="static")


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(fsdp=4, tensor=2))


@pytest.fixture(scope="module")
def model(mesh):
    return shard_model(Qwen(CONFIG, rngs=nnx.Rngs(0)), mesh)


def _update_batch(rollout) -> UpdateBatch:
    return UpdateBatch(prompt_tokens=jnp.asarray(rollout.prompt_tokens), prompt_mask=jnp.asarray(rollout.prompt_mask),
                       tokens=jnp.asarray(rollout.tokens), mask=jnp.asarray(rollout.mask),
                       advantages=jnp.zeros(rollout.tokens.shape[0]), old_logp=None)


def test_view_is_the_cast_weights_split_for_decoding(model, mesh):
    params = nnx.state(model)
    view = sampling_params(params, CONFIG.dtype, mesh)
    for value, trained in zip(jax.tree.leaves(view), jax.tree.leaves(params), strict=True):
        expected = np.asarray(trained).astype(jnp.bfloat16) if trained.ndim >= 2 else np.asarray(trained)
        assert value.dtype == expected.dtype  # bfloat16 matrices, float32 RMSNorm scales
        np.testing.assert_array_equal(np.asarray(value), expected)
    layer = view["layers"][0]
    assert layer["mlp"]["gate_proj"].get_value().sharding.spec == PartitionSpec(("fsdp", "tensor"), None)
    assert layer["self_attn"]["q_proj"].get_value().sharding.spec == PartitionSpec("tensor", None, None)
    assert view["embed_tokens"].get_value().sharding.spec == PartitionSpec("tensor", None)
    # the training parameters are left as they were: float32, embed dim over fsdp
    assert params["embed_tokens"].get_value().dtype == jnp.float32
    assert params["embed_tokens"].get_value().sharding.spec == PartitionSpec("tensor", "fsdp")
    # nothing to change (float32 compute, one device): no copy
    single = nnx.state(Qwen(CONFIG.replace(dtype="float32"), rngs=nnx.Rngs(0)))
    assert sampling_params(single, jnp.float32, None) is single


def test_view_follows_an_update(model, mesh):
    params = nnx.state(model)
    before = sampling_params(params, CONFIG.dtype, mesh)
    updated = jax.tree.map(lambda x: x * 1.5, params)  # every weight changed
    after = sampling_params(updated, CONFIG.dtype, mesh)
    old, new, trained = (np.asarray(x["layers"][0]["mlp"]["down_proj"].get_value()) for x in (before, after, updated))
    assert np.all((old != new) | (old == 0))
    np.testing.assert_array_equal(new, trained.astype(jnp.bfloat16))


@pytest.fixture(scope="module")
def sampled(model, mesh):
    """(a rollout sampled from the view, the training parameters copied to the host before it)."""
    before = jax.tree.map(np.asarray, nnx.state(model))
    return generate(model, PROMPTS, SAMPLED, jax.random.key(3), mesh=mesh), before


@pytest.mark.slow
def test_rollout_logprobs_equal_a_recomputation_with_the_view(model, mesh, sampled):
    rollout, _ = sampled
    graphdef, params = nnx.split(model)
    view = sampling_params(params, CONFIG.dtype, mesh)
    with jax.set_mesh(mesh):
        logp, _ = jax.jit(response_logprobs, static_argnums=0, static_argnames="temperature")(
            graphdef, view, _update_batch(rollout), temperature=SAMPLED.temperature)
    mask = rollout.mask == 1
    assert mask.sum() > 40
    difference = np.abs(np.asarray(logp) - rollout.logprobs)[mask]
    print("max |sampler - recomputed| log-prob", difference.max())
    assert difference.max() < 1e-2, difference.max()  # bfloat16 activations (eps 2^-8): cached decode vs one forward


def test_train_side_old_logprobs_are_unchanged(model, mesh, sampled):
    rollout, before = sampled
    graphdef, params = nnx.split(model)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(before), strict=True):
        assert not x.is_deleted() and x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), y)
    assert nnx.state(model)["embed_tokens"].get_value().sharding.spec == PartitionSpec("tensor", "fsdp")
    batch = _update_batch(rollout)
    restored = jax.tree.map(lambda x, y: jax.device_put(y, x.sharding), params, before)
    forward = no_grad_logprobs_program(graphdef, mesh, temperature=SAMPLED.temperature)
    batch = jax.device_put(batch, batch_sharding(mesh))
    after_sampling, as_before = (forward(p, batch) for p in (params, restored))
    for x, y in zip(after_sampling, as_before):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _largest_all_gather(hlo_text: str) -> int:
    """Elements of the largest array an all-gather of the optimized HLO text produces."""
    results = re.findall(r"= (\S+) all-gather(?:-start)?\(", hlo_text)
    return max((math.prod(int(d) for d in dims.split(",") if d)
                for result in results for dims in re.findall(r"\w+\[([\d,]*)\]", result)), default=0)


@pytest.mark.slow
def test_decode_step_moves_activations_not_weights(model, mesh):
    """The decode program (one while loop) compiled for the training parameters and for the
    view: the view's gathers only activations (smaller than any weight), and its collective
    bytes are a fraction of the training parameters'."""
    graphdef, params = nnx.split(model)
    view = sampling_params(params, CONFIG.dtype, mesh)
    ids = jnp.ones((4, 16), jnp.int32)
    programs = rollout_programs(graphdef, CONFIG, SAMPLED, mesh, prompt_slots=16, rows=8)
    with jax.set_mesh(mesh):
        state = programs.prefill.eval_shape(view, ids, ids, jax.random.key(0), stop_token_array(SAMPLED), jnp.int32(0))
        trained, viewed = (programs.decode.lower(p, state, jnp.int32(8)).compile().as_text() for p in (params, view))
    weight_sizes = [x.size for x in jax.tree.leaves(params) if x.ndim >= 2]
    assert _largest_all_gather(trained) >= min(weight_sizes)  # weights (FSDP-split) are all-gathered
    assert _largest_all_gather(viewed) < min(weight_sizes)
    print("decode collective bytes: training parameters", collective_bytes(trained), "view", collective_bytes(viewed))
    assert collective_bytes(viewed) < collective_bytes(trained) / 4
