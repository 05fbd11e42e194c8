"""Host-side parts of the RL loop: dynamic sampling, overlong penalty, advantages, bootstrap
intervals, level names, prompt instruction (no model: fast)."""

import dataclasses

import jax
import numpy as np
import pytest

from entropy_rl.data import INSTRUCTION, Problem
from entropy_rl.eval.heldout import bootstrap_interval
from entropy_rl.rollout import Rollout
from entropy_rl.train import data_setup, experience
from entropy_rl.train.config import TrainConfig, replace

N = 4  # samples per prompt


def _groups(rewards_per_group, tag):
    """Fake Groups whose prompt token of every row is `tag * 100 + group index`."""
    rewards = np.asarray(rewards_per_group, np.float32).reshape(-1)
    rows = len(rewards)
    group_ids = np.repeat(np.arange(rows // N), N) + tag * 100
    rollout = Rollout(prompt_tokens=group_ids[:, None].astype(np.int32), prompt_mask=np.ones((rows, 1), np.int32),
                      tokens=np.zeros((rows, 3), np.int32), mask=np.ones((rows, 3), np.int32),
                      logprobs=np.zeros((rows, 3), np.float32), lengths=np.full(rows, 3, np.int32),
                      stopped=np.ones(rows, bool), prompt_index=np.repeat(np.arange(rows // N), N))
    return experience.Groups(rollout, rewards.copy(), rewards.copy(), [None] * rows)


class _Iterator:
    def next_batch(self):
        return ["problem"] * 2


def _collect(monkeypatch, rounds_of_rewards, **algorithm):
    batches = iter([_groups(r, tag) for tag, r in enumerate(rounds_of_rewards)])
    monkeypatch.setattr(experience, "sample_groups", lambda *args, **kwargs: next(batches))
    config = replace(TrainConfig(), **{"data.batch_size": 2, **{f"algorithm.{k}": v for k, v in algorithm.items()}})
    sampling = dataclasses.replace(config.rollout.sampling_config(stop_token_ids=(1,), pad_token_id=0), n=N)
    return experience.collect_groups(None, _Iterator(), None, None, sampling, jax.random.key(0), config=config,
                                     mesh=None)


def test_without_dynamic_sampling_one_batch_is_used(monkeypatch):
    chosen, sampled, rounds = _collect(monkeypatch, [[[1, 1, 1, 1], [0, 1, 0, 0]]], dynamic_sampling=False)
    assert rounds == 1 and chosen is sampled and len(chosen.correct) == 2 * N


def test_dynamic_sampling_keeps_informative_groups_then_stops(monkeypatch):
    rounds_of_rewards = [[[1, 1, 1, 1], [0, 1, 0, 0]], [[0, 0, 0, 0], [1, 0, 1, 1]], [[0, 1, 1, 1], [1, 1, 1, 1]]]
    chosen, sampled, rounds = _collect(monkeypatch, rounds_of_rewards, dynamic_sampling=True, max_sampling_rounds=3)
    assert rounds == 2  # two informative groups after two rounds
    groups = chosen.rollout.prompt_tokens[::N, 0].tolist()
    assert groups == [1, 101]  # group 1 of round 0, group 1 of round 1
    assert len(sampled.correct) == 4 * N


def test_dynamic_sampling_fills_with_zero_variance_groups_after_k_rounds(monkeypatch):
    rounds_of_rewards = [[[1, 1, 1, 1], [0, 1, 0, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]]]
    chosen, _, rounds = _collect(monkeypatch, rounds_of_rewards, dynamic_sampling=True, max_sampling_rounds=2)
    assert rounds == 2
    assert chosen.rollout.prompt_tokens[::N, 0].tolist() == [1, 0]  # the informative one, then a filler
    assert chosen.rollout.tokens.shape == (2 * N, 3)  # the update always has data.batch_size groups


def test_overlong_penalty_is_dapo_soft_punishment():
    lengths = np.array([4, 6, 7, 8, 10])
    got = experience.overlong_penalty(lengths, max_length=10, buffer=4, factor=2.0)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.5, -1.0, -2.0])
    assert not experience.overlong_penalty(lengths, max_length=10, buffer=0, factor=1.0).any()


def test_group_advantages_grpo():
    config = TrainConfig()
    rewards = np.array([1, 0, 0, 1, 1, 1, 1, 1], np.float32)
    got = experience.group_advantages(rewards, 4, config)
    first = rewards[:4]
    np.testing.assert_allclose(got[:4], (first - first.mean()) / (first.std(ddof=1) + 1e-6), rtol=1e-5)
    np.testing.assert_allclose(got[4:], 0.0)


def test_bootstrap_interval_covers_the_mean_like_the_normal_approximation():
    rng = np.random.default_rng(0)
    per_problem = (rng.random(400) < 0.3).astype(float)
    low, high = bootstrap_interval(per_problem)
    mean, half = per_problem.mean(), 1.96 * per_problem.std(ddof=1) / np.sqrt(len(per_problem))
    assert low < mean < high
    assert abs(low - (mean - half)) < 0.01 and abs(high - (mean + half)) < 0.01
    low, high = bootstrap_interval(per_problem, paired_with=per_problem)
    assert low == high == 0.0


def test_synthetic_levels_and_instruction():
    assert data_setup.synthetic_levels((1, 2, 6)) == ("add1", "add2", "linear")
    with pytest.raises(ValueError, match="out of range"):
        data_setup.synthetic_levels((0,))
    config = TrainConfig()
    assert data_setup.prompt_instruction(config) == ""
    assert data_setup.prompt_instruction(replace(config, **{"data.dataset": "x.jsonl"})) == INSTRUCTION
    assert data_setup.prompt_instruction(replace(config, **{"data.instruction": "Be brief."})) == "Be brief."
    problem = Problem("p", "Compute 1+2.", "3")
    assert data_setup.PromptEncoder(config, _CharTokenizer())(problem) == [ord(c) for c in "Compute 1+2."]


class _CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]
