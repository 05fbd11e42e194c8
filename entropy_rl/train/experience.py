"""The experience of one RL step: G groups of n sampled responses, verified and rewarded
(DAPO's overlong penalty included), dynamic sampling's extra rounds, group advantages, the
rollout's metrics, and the rows placed on the mesh as the step's `UpdateBatch`.

On several JAX processes each host samples, decodes and verifies its share of the prompts
(`entropy_rl.rollout.scoring`); the small per-row results are gathered so every host takes
the same decisions, and each host's rows are built on its own devices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl import losses
from entropy_rl.data import Problem
from entropy_rl.parallel import batch_sharding
from entropy_rl.parallel.hosts import allgather_host_values, global_from_host_rows, is_multiprocess
from entropy_rl.rollout import Rollout
from entropy_rl.rollout.batching import geometric_bucket
from entropy_rl.rollout.scoring import gather_scores, score_batch
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.step import UpdateBatch


@dataclasses.dataclass
class Groups:
    """G groups of n responses; row i belongs to group i // n.

    rollout holds the rows' arrays: host numpy on one process; on several, global jax arrays
    split over the batch axes (each host's rows built on its own devices). The small per-row
    results are host numpy, the whole batch's on every host.
    """

    rollout: Rollout
    correct: np.ndarray  # [G n] verifier reward (1 = correct)
    rewards: np.ndarray  # [G n] reward used for the advantage (with the overlong penalty)
    answers: list  # [G n] extracted answers (None = no \boxed{})
    verifier_failures: int = 0  # checks that raised or timed out (reward 0) in the sampled batches
    references: list | None = None  # [G n] the problems' reference answers (None: not known)

    def select(self, groups: np.ndarray, n: int) -> "Groups":
        rows = (np.asarray(groups)[:, None] * n + np.arange(n)[None]).reshape(-1)
        rollout = jax.tree.map(lambda x: x[rows] if isinstance(x, np.ndarray) else _take_rows(x, rows), self.rollout)
        return Groups(rollout, self.correct[rows], self.rewards[rows], [self.answers[i] for i in rows],
                      self.verifier_failures, self.references and [self.references[i] for i in rows])

    @staticmethod
    def concatenate(parts: Sequence["Groups"]) -> "Groups":
        def concatenate(*xs):
            return np.concatenate(xs) if all(isinstance(x, np.ndarray) for x in xs) else _concatenate_rows(*xs)

        width = max(p.rollout.prompt_tokens.shape[1] for p in parts)  # rounds of different prompt buckets
        rollout = jax.tree.map(concatenate, *[_widen_prompts(p.rollout, width) for p in parts])
        return Groups(rollout, np.concatenate([p.correct for p in parts]), np.concatenate([p.rewards for p in parts]),
                      [a for p in parts for a in p.answers], sum(p.verifier_failures for p in parts),
                      None if any(p.references is None for p in parts) else [r for p in parts for r in p.references])


@jax.jit
def _take_rows(x: jax.Array, rows: np.ndarray) -> jax.Array:
    """x[rows] on the devices (rows: host numpy, the same on every host)."""
    return x[rows]


@jax.jit
def _concatenate_rows(*xs: jax.Array) -> jax.Array:
    return jnp.concatenate(xs)


def _widen_prompts(rollout: Rollout, width: int) -> Rollout:
    """The rollout with its prompts left-padded (token 0, mask 0) to `width` columns."""
    pad = width - rollout.prompt_tokens.shape[1]
    if pad == 0:
        return rollout
    if isinstance(rollout.prompt_tokens, np.ndarray):
        left_pad = functools.partial(np.pad, pad_width=((0, 0), (pad, 0)))
    else:
        left_pad = functools.partial(_left_pad_columns, pad=pad)
    return rollout.replace(prompt_tokens=left_pad(rollout.prompt_tokens), prompt_mask=left_pad(rollout.prompt_mask))


@functools.partial(jax.jit, static_argnames="pad")
def _left_pad_columns(x: jax.Array, pad: int) -> jax.Array:
    """x [B, T] with `pad` zero columns in front [B, pad + T]."""
    return jnp.pad(x, ((0, 0), (pad, 0)))


def batch_sampling(sampling, problems: Sequence[Problem], encode):
    """`sampling` with prompt_bucket = this batch's padded prompt length: its longest prompt
    rounded up to sampling.prompt_bucket x 2^k (a handful of lengths over a run, not the
    dataset's longest prompt for every batch)."""
    longest = max(len(encode(p)) for p in problems)
    return dataclasses.replace(sampling, prompt_bucket=geometric_bucket(longest, sampling.prompt_bucket))


def overlong_penalty(lengths: np.ndarray, *, max_length: int, buffer: int, factor: float) -> np.ndarray:
    """DAPO's soft overlong punishment [N]: 0 up to max_length - buffer, then falling linearly
    to -factor at max_length."""
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    excess = np.clip(lengths - (max_length - buffer), 0, buffer)
    return (-factor * excess / buffer).astype(np.float32)


def sample_groups(model, problems: Sequence[Problem], encode, tokenizer, sampling, key, *, config: TrainConfig,
                  mesh) -> Groups:
    """n responses per problem, verified and rewarded (`entropy_rl.rollout.scoring`: each host
    samples back, decodes and verifies its share; the per-row rewards are then gathered);
    prompts padded to the batch's bucket (`batch_sampling`)."""
    sampling = batch_sampling(sampling, problems, encode)
    scored = score_batch(model, problems, encode, tokenizer, sampling, key, verifier=config.data.verifier,
                         timeout_s=config.data.reward_timeout_s, mesh=mesh)
    gathered = gather_scores(scored, mesh)
    a = config.algorithm
    rewards = gathered.rewards + overlong_penalty(gathered.lengths, max_length=sampling.max_new_tokens,
                                                  buffer=a.overlong_buffer_len, factor=a.overlong_penalty_factor)
    rollout = scored.rollout
    if is_multiprocess(mesh):
        rollout = jax.tree.map(lambda x: global_from_host_rows(x, mesh), rollout)
    return Groups(rollout, gathered.rewards, rewards, gathered.answers, gathered.verifier_failures,
                  [p.answer for p in problems for _ in range(sampling.n)])


def collect_groups(model, iterator, encode, tokenizer, sampling, key, *, config: TrainConfig, mesh
                   ) -> tuple[Groups, Groups, int]:
    """(the step's update groups, every group sampled this step, sampling rounds).

    Without dynamic sampling: one batch of data.batch_size prompts. With it (DAPO): keep the
    groups whose rewards differ, sample further batches until data.batch_size such groups
    or algorithm.max_sampling_rounds rounds, then fill with zero-variance groups / trim to
    data.batch_size groups, so the update always has the same shape. The decisions read
    the gathered rewards, so every host takes the same ones.
    """
    n, size = sampling.n, config.data.batch_size
    rounds, sampled, kept, zero_variance = 0, [], [], []
    while True:
        groups = sample_groups(model, iterator.next_batch(), encode, tokenizer, sampling,
                               jax.random.fold_in(key, rounds), config=config, mesh=mesh)
        rounds += 1
        sampled.append(groups)
        if not config.algorithm.dynamic_sampling:
            return groups, groups, rounds
        flat = np.asarray(losses.zero_variance_groups(jnp.asarray(groups.rewards.reshape(-1, n))))
        kept.append(groups.select(np.flatnonzero(~flat), n))
        zero_variance.append(groups.select(np.flatnonzero(flat), n))
        if sum(len(g.correct) for g in kept) >= size * n or rounds >= config.algorithm.max_sampling_rounds:
            break
    chosen = Groups.concatenate(kept + zero_variance).select(np.arange(size), n)
    return chosen, Groups.concatenate(sampled), rounds


def group_advantages(rewards: np.ndarray, n: int, config: TrainConfig) -> np.ndarray:
    """Advantages [G n] of rewards [G n] with the configured estimator."""
    a = config.algorithm
    grouped = jnp.asarray(rewards.reshape(-1, n))
    return np.asarray(losses.group_advantages(grouped, estimator=a.advantage_estimator, eps=a.advantage_eps)).reshape(-1)


def _host_values(x) -> np.ndarray:
    """A small per-row array of a Rollout on the host: as is, or gathered from every host."""
    return x if isinstance(x, np.ndarray) else allgather_host_values(x)


def rollout_metrics(groups: Groups, sampled: Groups, n: int) -> dict[str, float]:
    """Reward, accuracy, lengths and the online semantic entropy of the sampled groups."""
    from entropy_rl.semantic_entropy import group_semantic_entropy

    lengths, stopped = _host_values(sampled.rollout.lengths), _host_values(sampled.rollout.stopped)
    answers = [sampled.answers[i:i + n] for i in range(0, len(sampled.answers), n)]
    zero_var = np.asarray(losses.zero_variance_groups(jnp.asarray(sampled.rewards.reshape(-1, n))))
    return {
        "reward/mean": float(sampled.rewards.mean()),
        "accuracy": float(sampled.correct.mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/truncated_fraction": float(np.mean(~stopped)),
        "groups/zero_variance_fraction": float(zero_var.mean()),
        "groups/update_accuracy": float(groups.correct.mean()),
        "reward/verifier_failures": float(sampled.verifier_failures),
        "reward/no_answer_fraction": float(np.mean([a is None for a in sampled.answers])),
        "semantic_entropy/mean": float(np.mean(group_semantic_entropy(answers, exact_match_only=True))),
    }


def _place_rows(x, mesh: jax.sharding.Mesh):
    """x split over the mesh's batch axes: a host array (the whole batch, the same on every
    host) or a global jax array of any sharding."""
    sharding = batch_sharding(mesh)
    if isinstance(x, np.ndarray):
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return _resharding(sharding)(x)


@functools.cache
def _resharding(sharding: jax.sharding.NamedSharding):
    """The identity compiled to put its output in `sharding` (one program per sharding)."""
    return jax.jit(lambda x: x, out_shardings=sharding)


def update_batch(groups: Groups, advantages: np.ndarray, mesh: jax.sharding.Mesh) -> UpdateBatch:
    """The groups' rows as an UpdateBatch on the mesh (split over its batch axes), prompts as
    sampled (left-padded to the batch's prompt bucket); old_logp still None."""
    r = groups.rollout
    batch = UpdateBatch(prompt_tokens=r.prompt_tokens, prompt_mask=r.prompt_mask,
                        tokens=r.tokens, mask=r.mask, advantages=advantages.astype(np.float32), old_logp=None)
    return jax.tree.map(lambda x: _place_rows(x, mesh), batch)


def rollout_checks(old_logp: jax.Array, groups: Groups, batch: UpdateBatch,
                   mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
    """(max |old - sampler log-prob| over response tokens, prompt + response tokens of the batch)."""
    return _rollout_checks(old_logp, _place_rows(groups.rollout.logprobs, mesh), batch)


@jax.jit
def _rollout_checks(old_logp: jax.Array, sampler_logp: jax.Array, batch: UpdateBatch) -> tuple[jax.Array, jax.Array]:
    """`rollout_checks` on the sampler's log-probs placed as the batch (one program)."""
    mismatch = jnp.max(jnp.abs(old_logp - sampler_logp) * batch.mask)
    return mismatch, jnp.sum(batch.mask) + jnp.sum(batch.prompt_mask)
