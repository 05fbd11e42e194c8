"""The supervised warm start: teacher-forcing arrays, determinism, and accuracy above chance."""

import pytest
import jax
import numpy as np
from flax import nnx

from entropy_rl.data import load_tokenizer, synthetic_problems
from entropy_rl.model import Qwen, tiny_config
from entropy_rl.parallel import MeshConfig, make_mesh, shard_model
from entropy_rl.rewards import get_verifier
from entropy_rl.rollout import SamplingConfig, generate
from entropy_rl.train.warmstart import target_batch, warm_start

TOKENIZER = load_tokenizer("builtin")


def encode(problem):
    return TOKENIZER.encode(problem.problem)


def _setup():
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    config = tiny_config(vocab_size=TOKENIZER.vocab_size, hidden_size=64, intermediate_size=128)
    return mesh, shard_model(Qwen(config, rngs=nnx.Rngs(0)), mesh)


def test_target_batch_layout():
    problems = synthetic_problems(3, seed=0, levels=("add1",))
    batch = target_batch(problems, encode, TOKENIZER)
    for i, p in enumerate(problems):
        prompt = batch.prompt_tokens[i][batch.prompt_mask[i] == 1]
        assert TOKENIZER.decode(prompt) == p.problem  # left-padded
        assert batch.prompt_mask[i, -1] == 1
        target = batch.tokens[i][batch.mask[i] == 1]
        assert TOKENIZER.decode(target) == p.meta["solution"] + "<|im_end|>"
        assert batch.mask[i, 0] == 1  # right-padded


@pytest.mark.slow
def test_warm_start_learns_the_task_and_is_deterministic():
    problems = synthetic_problems(400, seed=0, levels=("add1",))
    heldout = synthetic_problems(64, seed=0, levels=("add1",), split="test")
    sampling = SamplingConfig(max_new_tokens=8, temperature=0.0, stop_token_ids=TOKENIZER.stop_token_ids,
                              prompt_bucket=16, response_bucket=8)
    truths = [p.answer for p in heldout]

    def accuracy(model):
        rollout = generate(model, [encode(p) for p in heldout], sampling, jax.random.key(0))
        responses = [TOKENIZER.decode(r[:n], skip_special_tokens=True) for r, n in zip(rollout.tokens, rollout.lengths)]
        return float(get_verifier("synthetic")(responses, truths).rewards.mean())

    mesh, model = _setup()
    assert accuracy(model) == 0.0  # a random policy never writes \boxed{<sum>}
    kwargs = dict(steps=150, batch_size=32, learning_rate=3e-3, seed=0, mesh=mesh)
    losses = warm_start(model, problems, encode, TOKENIZER, **kwargs)
    assert losses["warmstart/loss_last"] < 0.5 * losses["warmstart/loss_first"]
    # Chance: a uniform guess among the 19 possible sums of two digits is right 1 time in 19.
    assert accuracy(model) > 3 / 19
    _, again = _setup()
    warm_start(again, problems, encode, TOKENIZER, **kwargs)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
