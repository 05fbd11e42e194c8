"""`train(config) -> summary`: the RL loop, one step top to bottom (docs/design.md, "Data flow of one RL step").

    set_up                  mesh, policy, data, sampling and update settings (`Trainer`)
    restore_or_initialize   the last checkpoint, or a fresh state and the held-out "before"
    for each step, rl_step:
        prompts (iterator / curriculum) -> rollout: n responses per prompt
          -> rewards (verifier, DAPO overlong penalty) -> group advantages
          [-> dynamic sampling: drop zero-variance groups, sample more, at most k rounds]
          -> old log-probs and entropy (one no-grad forward), reference log-probs (when used)
          -> ppo_epochs x mini-batches of the compiled train step
    count_step, after_step  metrics and counters -> checkpoint (every N steps and the last)
                            / held-out eval (`entropy_rl.eval.heldout`)

Every random choice of step s comes from fold_in(key(seed), s), and the data iterator's
state is checkpointed, so a run killed at any point and restarted continues exactly as an
uninterrupted run would (bitwise on the CPU). Shapes are static: prompts are padded to one
length per batch (the batch's longest prompt rounded up to rollout.prompt_bucket x 2^k,
`entropy_rl.rollout.batching.geometric_bucket`) and a step always updates on data.batch_size
groups, so the sampler and the train step compile once per prompt bucket (a handful).

On several JAX processes (one per host) every process runs this same loop: the iterator
draws the same global prompts everywhere, each host samples back, decodes and verifies its
share of them (`entropy_rl.rollout.scoring`), the small per-row rewards are gathered so every
host takes the same decisions, and the update batch is built on the devices from each host's
rows; log-probs and mini-batches never leave the devices. Only process 0 writes metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropy_rl import losses
from entropy_rl.data import (LEVELS, Problem, PromptIterator, deduplicate, default_instruction, format_prompt,
                             load_problems, synthetic_problems)
from entropy_rl.data.synthetic import problem_set_id
from entropy_rl.eval.heldout import bootstrap_interval, eval_log, heldout_eval
from entropy_rl.parallel import batch_sharding, make_mesh, mesh_compiler_options
from entropy_rl.parallel.hosts import allgather_host_values, global_from_host_rows, is_multiprocess, mesh_process_count
from entropy_rl.parallel.watchdog import beat
from entropy_rl.policy import build_policy
from entropy_rl.rollout import Rollout
from entropy_rl.rollout.batching import geometric_bucket
from entropy_rl.rollout.scoring import gather_scores, score_batch
from entropy_rl.train.checkpoint import Checkpointer, all_finite, set_aside_previous_run
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.limits import check_lengths
from entropy_rl.train.packed_update import PackedUpdate
from entropy_rl.train.metrics import METRICS_FILE, TENSORBOARD_SUBDIR, MetricsLogger, read_metrics
from entropy_rl.train.progress import loss_reporter, say
from entropy_rl.train.samples import SamplesWriter, sample_records, sample_rows_of
from entropy_rl.train.signals import StopSignals
from entropy_rl.train.step import (StepConfig, TrainState, UpdateBatch, create_train_state, no_grad_logprobs,
                                   make_optimizer, non_finite_counts, make_train_step, token_statistics)
from entropy_rl.train.warmstart import warm_start



@functools.cache
def _token_statistics(mesh: jax.sharding.Mesh):
    """`token_statistics` compiled for the mesh's platform."""
    return jax.jit(token_statistics, compiler_options=mesh_compiler_options(mesh))


# --------------------------------------------------------------------------- data


def synthetic_levels(levels: Sequence[int]) -> tuple[str, ...]:
    """Level numbers of the config (1 = easiest) as the synthetic task's level names
    (1 add1, 2 add2, 3 sub2, 4 mul1, 5 add3, 6 linear)."""
    names = list(LEVELS)
    bad = [level for level in levels if not 1 <= level <= len(names)]
    if bad:
        raise ValueError(f"data.synthetic_levels: {bad} out of range 1..{len(names)} ({', '.join(names)})")
    return tuple(names[level - 1] for level in levels)


def training_problems(config: TrainConfig) -> list[Problem]:
    """The training split: the built-in task, or a dataset file / directory (repeated
    problems dropped and counted when data.deduplicate)."""
    d = config.data
    if d.dataset == "synthetic":
        return synthetic_problems(d.num_synthetic_problems, seed=config.seed, levels=synthetic_levels(d.synthetic_levels))
    problems = list(load_problems(d.dataset, problem_key=d.problem_key, answer_key=d.answer_key, on_bad_row=d.on_bad_row))
    if d.deduplicate:
        problems, removed = deduplicate(problems)
        if removed:
            say(f"data: {removed} repeated problems removed from {d.dataset} ({len(problems)} distinct kept; "
                "data.deduplicate=false keeps them)")
    return problems


def training_problem_set(config: TrainConfig) -> str:
    """What decides the training problems: the built-in set's `problem_set_id`, or the dataset path."""
    d = config.data
    if d.dataset != "synthetic":
        return d.dataset
    return problem_set_id(levels=synthetic_levels(d.synthetic_levels), seed=config.seed, split="train")


def settings_line(config: TrainConfig, num_problems: int) -> str:
    """The data-dependent settings the run uses, as printed at its start (a dataset file
    changes their defaults: `train.config.DATASET_FILE_DEFAULTS`)."""
    d, e, w = config.data, config.eval, config.warmstart
    source = (f"the built-in task (levels {'+'.join(synthetic_levels(d.synthetic_levels))})" if d.dataset == "synthetic"
              else d.dataset)
    warm = f"{w.steps} steps" if w.enabled and config.model.hf_path is None and w.steps > 0 else "off"
    return (f"data: {num_problems} problems from {source}; verifier {d.verifier}; prompts {d.prompt_style}; "
            f"held-out {e.benchmark} ({e.num_problems} problems x {e.n}); warm start {warm}")


def drop_long_prompts(problems: Sequence[Problem], encode, max_length: int) -> list[Problem]:
    """The problems whose prompt has at most max_length tokens; the others are named in a
    warning (id and length). Raises when none is left."""
    lengths = [len(encode(p)) for p in problems]
    kept = [p for p, length in zip(problems, lengths) if length <= max_length]
    dropped = [(p.id, length) for p, length in zip(problems, lengths) if length > max_length]
    if dropped:
        shown = ", ".join(f"{pid!r} ({length} tokens)" for pid, length in dropped[:5])
        warnings.warn(f"data.max_prompt_length={max_length}: {len(dropped)} of {len(problems)} prompts are longer and "
                      f"left out: {shown}{', ...' if len(dropped) > 5 else ''}", stacklevel=2)
    if not kept:
        raise ValueError(f"data.max_prompt_length={max_length}: every prompt is longer (shortest "
                         f"{min(lengths)} tokens)")
    return kept


def heldout_problems(config: TrainConfig) -> list[Problem]:
    """The held-out evaluation problems: the synthetic task's test split at the training
    levels, or a shipped benchmark / problem file (`entropy_rl.eval.benchmark_problems`)."""
    e = config.eval
    if e.benchmark == "synthetic":
        levels = synthetic_levels(config.data.synthetic_levels)
        return synthetic_problems(e.num_problems, seed=config.seed, levels=levels, split="test")
    from entropy_rl.eval import benchmark_problems

    return benchmark_problems(e.benchmark, max_problems=e.num_problems)


def make_iterator(config: TrainConfig, problems: Sequence[Problem]):
    """PromptIterator, or SENT's CurriculumIterator when a ranking file is configured."""
    c = config.data.curriculum
    if c.ranking_file is None:
        return PromptIterator(problems, config.data.batch_size, seed=config.seed)
    from entropy_rl.data.curriculum import CurriculumIterator, check_ranked_problem_set

    check_ranked_problem_set(c.ranking_file, training_problem_set(config))
    return CurriculumIterator(problems, c.ranking_file, config.data.batch_size, seed=config.seed,
                              num_stages=c.num_stages, epochs_per_stage=c.epochs_per_stage, on_missing=c.on_missing)


def prompt_instruction(config: TrainConfig) -> str:
    """data.instruction; None = `entropy_rl.data.default_instruction` of the dataset."""
    if config.data.instruction is not None:
        return config.data.instruction
    return default_instruction(config.data.dataset)


class PromptEncoder:
    """Problem -> prompt token ids (data.prompt_style, `prompt_instruction`), cached."""

    def __init__(self, config: TrainConfig, tokenizer):
        self.tokenizer, self.style = tokenizer, config.data.prompt_style
        self.instruction = prompt_instruction(config)
        self._cache: dict[str, list[int]] = {}

    def __call__(self, problem: Problem) -> list[int]:
        if problem.problem not in self._cache:
            text = format_prompt(problem, self.tokenizer, style=self.style, instruction=self.instruction)
            self._cache[problem.problem] = self.tokenizer.encode(text)
        return self._cache[problem.problem]


# --------------------------------------------------------------------------- rollouts and rewards


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


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
    """What the loop holds besides the arrays: host-side counters, checkpointed as JSON."""

    num_skipped: int = 0
    entropy_start: float | None = None
    entropy_end: float | None = None
    masked_fraction_sum: float = 0.0
    steps_logged: int = 0
    before: dict | None = None
    warmstart: dict | None = None
    steps_without_signal: int = 0  # every group's rewards equal: all advantages 0
    steps_without_answers: int = 0  # the verifier extracted no answer from most responses
    collapsed_at: int | None = None  # the step whose policy had collapsed to uniform (`warn_if_uniform`)


def _train_state_tree(state: TrainState, ref_params) -> dict:
    tree = {"opt_state": state.opt_state, "step": state.step}
    if ref_params is not None:
        tree["ref_params"] = ref_params
    return tree


@jax.jit
def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@jax.jit
def _mean_metrics(per_update: list[dict]) -> dict[str, jax.Array]:
    """Each metric's mean over the step's updates (one program: no op-by-op dispatch on
    arrays that span several processes)."""
    return {key: jnp.mean(jnp.stack([m[key] for m in per_update])) for key in per_update[0]}


@jax.jit
def _rollout_checks(old_logp: jax.Array, sampler_logp: jax.Array, batch: UpdateBatch) -> tuple[jax.Array, jax.Array]:
    """(max |old - sampler log-prob| over response tokens, prompt + response tokens of the batch)."""
    mismatch = jnp.max(jnp.abs(old_logp - sampler_logp) * batch.mask)
    return mismatch, jnp.sum(batch.mask) + jnp.sum(batch.prompt_mask)


@dataclasses.dataclass
class Trainer:
    """Everything a run sets up once: the mesh, data, sampling and update settings."""

    config: TrainConfig
    mesh: jax.sharding.Mesh
    tokenizer: Any
    encode: PromptEncoder
    problems: list[Problem]
    heldout: list[Problem]
    iterator: Any
    sampling: Any  # SamplingConfig of the rollouts (prompt_bucket: the base of each batch's bucket)
    optimizer: Any
    schedule: Any
    step_config: StepConfig
    checkpointer: Checkpointer
    seed_key: jax.Array
    eval_key: jax.Array  # the same held-out samples' randomness before, during and after

    @property
    def mini_batches(self) -> int:
        return self.config.data.batch_size // self.config.algorithm.mini_batch_size

    @functools.cached_property
    def vocab_size(self) -> int:
        """The policy's vocabulary (its logits), at least the tokenizer's."""
        return self.config.model.qwen_config(self.tokenizer.vocab_size).vocab_size

    @property
    def mini_rows(self) -> int:
        return self.config.algorithm.mini_batch_size * self.sampling.n

    def evaluate(self, state: TrainState, label: str) -> dict[str, Any]:
        """The held-out evaluation, announced before and after (it can take long)."""
        e = self.config.eval
        say(f"held-out eval ({label}): {len(self.heldout)} {e.benchmark} problems x {e.n} samples ...")
        start = time.time()
        result = heldout_eval(state.model(), self.tokenizer, self.heldout, self.encode, self.eval_key,
                              config=self.config, mesh=self.mesh)
        say(f"held-out eval ({label}): accuracy {result['accuracy']:.3f} in {time.time() - start:.0f} s")
        return result


@dataclasses.dataclass
class Programs:
    """The compiled programs of the update: the train step, no-grad log-probs, row selection."""

    train_step: Any
    logprobs: Any
    take_rows: Any
    packed: PackedUpdate  # the same on packed rows (algorithm.packing)


def set_up(config: TrainConfig, devices: Sequence[jax.Device] | None = None) -> tuple[Trainer, nnx.Module]:
    """(the run's Trainer, the freshly built policy on the mesh)."""
    mesh = make_mesh(config.mesh, devices=devices)
    processes = mesh_process_count(mesh)
    if config.data.batch_size % processes:
        raise ValueError(f"data.batch_size = {config.data.batch_size} prompts do not split over {processes} processes")
    policy, tokenizer = build_policy(config.model, seed=config.seed, mesh=mesh)
    encode = PromptEncoder(config, tokenizer)
    problems = training_problems(config)
    if config.data.max_prompt_length is not None:
        problems = drop_long_prompts(problems, encode, config.data.max_prompt_length)
    check_lengths(config, longest_prompt=max(((p.id, len(encode(p))) for p in problems), key=lambda x: x[1],
                                             default=None))
    say(settings_line(config, len(problems)))
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids,
                                              pad_token_id=tokenizer.pad_token_id)
    a = config.algorithm
    mini_batches = config.data.batch_size // a.mini_batch_size
    optimizer, schedule = make_optimizer(config.optimizer, config.total_steps * a.ppo_epochs * mini_batches)
    mini_rows = a.mini_batch_size * sampling.n
    step_config = StepConfig(a.name, a.loss, temperature=sampling.temperature or 1.0,
                             chunk_size=config.model.logprob_chunk_size,
                             num_micro_batches=mini_rows // a.micro_batch_size if a.micro_batch_size else 1)
    seed_key = jax.random.key(config.seed)
    if not config.resume:  # a fresh run in a used run_dir: the old one is moved aside, never deleted
        set_aside_previous_run(config.run_dir)
    trainer = Trainer(config=config, mesh=mesh, tokenizer=tokenizer, encode=encode, problems=problems,
                      heldout=heldout_problems(config), iterator=make_iterator(config, problems), sampling=sampling,
                      optimizer=optimizer, schedule=schedule, step_config=step_config,
                      checkpointer=Checkpointer.from_config(config), seed_key=seed_key,
                      eval_key=jax.random.fold_in(seed_key, 2**31 - 1))
    return trainer, policy


def restore_or_initialize(trainer: Trainer, policy: nnx.Module) -> tuple[TrainState, Any, Run, int]:
    """(train state, reference parameters or None, counters, first step): the last checkpoint
    when config.resume finds one; else a fresh state (after the warm start when configured)
    and the held-out accuracy before training."""
    config = trainer.config
    state = create_train_state(policy, trainer.optimizer, trainer.mesh)
    needs_reference = losses.get_policy_loss(config.algorithm.name).needs_reference(config.algorithm.loss)
    ref_params = _copy(state.params) if needs_reference else None
    restored = trainer.checkpointer.resume(params=state.params, train_state=_train_state_tree(state, ref_params),
                                           config=config) if config.resume else None
    if restored is not None:
        t = restored.train_state
        state = state.replace(params=restored.params, opt_state=t["opt_state"], step=t["step"])
        try:
            trainer.iterator.load_state_dict(restored.data_state["iterator"])
        except ValueError as error:  # the dataset changed since the checkpoint
            raise ValueError(f"checkpoint {restored.step} in {trainer.checkpointer.directory} was saved over other "
                             f"problems than data.dataset={config.data.dataset} holds now ({error}); restore the "
                             "dataset as it was, or resume=false to start over (the old run is moved aside), or use "
                             "another run_dir") from None
        return state, t.get("ref_params"), Run(**restored.data_state["run"]), restored.step
    run = Run()
    if config.warmstart.enabled and config.model.hf_path is None and config.warmstart.steps > 0:
        w = config.warmstart
        report = loss_reporter(label="warm start", total=w.steps, every_s=config.logging.log_every_s,
                               live=config.logging.progress_bar)
        run.warmstart = warm_start(policy, trainer.problems, trainer.encode, trainer.tokenizer, steps=w.steps,
                                   batch_size=w.batch_size, learning_rate=w.learning_rate, seed=config.seed,
                                   mesh=trainer.mesh, report=report)
        state = create_train_state(policy, trainer.optimizer, trainer.mesh)
        ref_params = _copy(state.params) if ref_params is not None else None
    run.before = trainer.evaluate(state, "before training")
    return state, ref_params, run, 0


def compile_programs(trainer: Trainer, state: TrainState) -> Programs:
    mesh, step_config = trainer.mesh, trainer.step_config
    return Programs(
        train_step=make_train_step(state, mesh, optimizer=trainer.optimizer, schedule=trainer.schedule,
                                   config=step_config),
        logprobs=functools.partial(no_grad_logprobs, state.graphdef, mesh=mesh, temperature=step_config.temperature,
                                   chunk_size=step_config.chunk_size,
                                   num_micro_batches=step_config.num_micro_batches * trainer.mini_batches),
        # a mini-batch: rows of the update batch gathered on the devices, split as the batch
        take_rows=jax.jit(lambda batch, rows: jax.tree.map(lambda x: x[rows], batch),
                          out_shardings=batch_sharding(mesh)),
        packed=PackedUpdate.create(state, mesh, algorithm=trainer.config.algorithm, optimizer=trainer.optimizer,
                                   schedule=trainer.schedule, step_config=step_config,
                                   micro_rows=trainer.mini_rows // step_config.num_micro_batches),
    )


def rl_step(trainer: Trainer, programs: Programs, state: TrainState, ref_params, step: int,
            samples: SamplesWriter | None = None) -> tuple[TrainState, dict[str, Any]]:
    """One RL step: sample and score, advantages, old / reference log-probs, then
    ppo_epochs x mini-batches of updates (a few responses to `samples`, token by token).
    Returns (state, the step's metrics)."""
    config, sampling, a = trainer.config, trainer.sampling, trainer.config.algorithm
    step_start = time.time()
    step_key = jax.random.fold_in(trainer.seed_key, step)
    groups, sampled, rounds = collect_groups(state.model(), trainer.iterator, trainer.encode, trainer.tokenizer,
                                             sampling, jax.random.fold_in(step_key, 0), config=config,
                                             mesh=trainer.mesh)
    advantages = group_advantages(groups.rewards, sampling.n, config)
    batch = update_batch(groups, advantages, trainer.mesh)
    rollout_time = time.time() - step_start

    packed, mesh = programs.packed, trainer.mesh
    lengths = None if packed.mode == "off" else packed.lengths(batch)
    layout = None if lengths is None else packed.layout(batch, lengths)
    logprobs = programs.logprobs if layout is None else lambda p, b: packed.run_logprobs(p, b, layout, mesh)
    old_logp, entropy = logprobs(state.params, batch)
    ref_logp = None if ref_params is None else logprobs(ref_params, batch)[0]
    batch = batch.replace(old_logp=old_logp, ref_logp=ref_logp)  # stays on the devices
    metrics = dict(_token_statistics(trainer.mesh)(old_logp, entropy, batch.advantages, batch.mask))
    metrics["rollout/logp_mismatch"], tokens = _rollout_checks(old_logp, _place_rows(groups.rollout.logprobs,
                                                                                      trainer.mesh), batch)
    metrics["rollout/prompt_length"] = batch.prompt_tokens.shape[1]  # the batch's prompt bucket
    flag_metric = losses.get_policy_loss(a.name).flag_metric
    if samples is not None and config.logging.samples_per_step:
        rows = sample_rows_of(len(advantages), config.logging.samples_per_step)
        samples.write(sample_records(step + 1, batch, entropy, rows=rows, rewards=groups.rewards,
                                     correct=groups.correct, answers=groups.answers, references=groups.references,
                                     tokenizer=trainer.tokenizer,
                                     loss_name=a.name, loss_config=trainer.step_config.loss,
                                     flag=flag_metric and f"loss/{flag_metric}", mesh=trainer.mesh, state=state,
                                     temperature=trainer.step_config.temperature,
                                     chunk_size=trainer.step_config.chunk_size))

    per_update = []
    update_key = jax.random.fold_in(step_key, 1)
    for epoch in range(a.ppo_epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(update_key, epoch), len(advantages)))
        for k in range(trainer.mini_batches):
            rows = order[k * trainer.mini_rows:(k + 1) * trainer.mini_rows]
            mini, mini_key = programs.take_rows(batch, rows), jax.random.fold_in(update_key, 1000 * epoch + k)
            mini_layout = None if layout is None else packed.layout(mini, lengths, rows)
            if mini_layout is None:
                state, update_metrics = programs.train_step(state, mini, mini_key)
            else:
                state, update_metrics = packed.run_train_step(state, mini, mini_layout, mini_key, mesh)
            per_update.append(update_metrics)
    update_metrics = _mean_metrics(per_update)
    jax.block_until_ready(state.params)
    step_time = time.time() - step_start

    metrics |= update_metrics | ({} if lengths is None else packed.token_metrics(batch, lengths, layout))
    if flag_metric is not None:
        metrics["loss/masked_fraction"] = update_metrics[f"loss/{flag_metric}"]
    metrics |= rollout_metrics(groups, sampled, sampling.n)
    metrics |= {"time/rollout": rollout_time, "time/update": step_time - rollout_time, "time/step": step_time,
                "time/tokens_per_s": float(tokens) / step_time, "sampling/rounds": rounds}
    return state, metrics


def count_step(run: Run, scalars: dict[str, float], state: TrainState, *, step: int, config: TrainConfig,
               checkpointer: Checkpointer) -> None:
    """Add a logged step to the run's counters; stop after max_consecutive_nonfinite skipped
    (non-finite) updates in a row, as counted by the optimizer's `optax.apply_if_finite`, or
    at once when the step's parameters hold a NaN or an infinity (FloatingPointError)."""
    run.steps_logged += 1
    run.entropy_start = scalars["entropy/mean"] if run.entropy_start is None else run.entropy_start
    run.entropy_end = scalars["entropy/mean"]
    run.masked_fraction_sum += scalars.get("loss/masked_fraction", 0.0)
    consecutive_nonfinite, run.num_skipped = non_finite_counts(state)
    if not all_finite(state.params):  # a finite update can still overflow them; never checkpointed
        raise FloatingPointError(
            f"step {step} made the parameters non-finite (NaN or inf): stopping. The last good checkpoint is step "
            f"{checkpointer.latest_step()} in {checkpointer.directory}; lower optimizer.learning_rate")
    if consecutive_nonfinite >= config.max_consecutive_nonfinite:
        raise FloatingPointError(
            f"{consecutive_nonfinite} non-finite updates in a row at step {step}: stopping. The last "
            f"good checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory}; lower "
            "optimizer.learning_rate or check the rewards and the model's dtype")


def warn_if_uniform(run: Run, scalars: dict[str, float], step: int, vocab_size: int, write) -> None:
    """Report (once) a policy that collapsed to uniform: the whole batch's mean token entropy
    reached ln V from a lower start (a fresh random policy may start there)."""
    uniform = 0.99 * np.log(vocab_size)
    if run.collapsed_at is None and scalars["entropy/mean"] >= uniform > run.entropy_start:
        run.collapsed_at = step
        write(f"warning: step {step}: the policy has collapsed to uniform: entropy {scalars['entropy/mean']:.3f} "
              f"over the whole batch, ln V = {np.log(vocab_size):.3f} for a vocabulary of {vocab_size} (it no "
              "longer depends on its input); lower optimizer.learning_rate")


def warn_without_signal(run: Run, scalars: dict[str, float], step: int, *, verifier: str, write) -> None:
    """Warn (first time, then every 10th) about steps that cannot learn: every group's rewards
    equal (all advantages 0), or no answer extracted from most responses (a format problem)."""
    if scalars["groups/zero_variance_fraction"] == 1.0:
        run.steps_without_signal += 1
        if run.steps_without_signal % 10 == 1:
            write(f"warning: step {step}: no learning signal: in every group all responses got the same reward "
                  f"(accuracy {scalars['accuracy']:.0%}), so every advantage is 0 ({run.steps_without_signal} such "
                  "steps so far); the problems may be too easy or too hard for the policy "
                  "(groups/zero_variance_fraction in metrics.jsonl)")
    if scalars["reward/no_answer_fraction"] > 0.5:
        run.steps_without_answers += 1
        if run.steps_without_answers % 10 == 1:
            write(f"warning: step {step}: the {verifier!r} verifier found no answer in "
                  f"{scalars['reward/no_answer_fraction']:.0%} of the responses ({run.steps_without_answers} such steps "
                  "so far); check that data.instruction asks for the format data.verifier reads (samples.jsonl "
                  "holds example responses)")


def after_step(trainer: Trainer, state: TrainState, ref_params, run: Run, logger: MetricsLogger, step: int,
               stop: StopSignals) -> None:
    """After step `step` (1-based) is counted: a checkpoint every checkpoint.every_steps, at
    the last step and when a SIGTERM asked to stop (then `Preempted` is raised once it is
    saved), a held-out evaluation every eval.every_steps (the last step's is the final one,
    done by `train`)."""
    config = trainer.config
    last = step == config.total_steps
    if last or step % config.checkpoint.every_steps == 0 or stop.requested:
        trainer.checkpointer.save(step, params=state.params, train_state=_train_state_tree(state, ref_params),
                                  data_state={"iterator": trainer.iterator.state_dict(),
                                              "run": dataclasses.asdict(run)}, config=config)
    stop.finish_if_requested(step, trainer.checkpointer)
    if _periodic_eval_due(config, step):
        logger.log(step, eval_log(trainer.evaluate(state, f"step {step}"), config.eval.benchmark))


def _periodic_eval_due(config: TrainConfig, step: int) -> bool:
    """Whether a held-out evaluation follows step `step` (the last step's is the final one)."""
    return bool(config.eval.every_steps) and step % config.eval.every_steps == 0 and step < config.total_steps


def _logged_eval_steps(run_dir: str) -> set[int]:
    """The steps of RUN_DIR/metrics.jsonl that have a held-out evaluation row."""
    return {row["step"] for row in read_metrics(run_dir) if "eval/accuracy" in row}


def _finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The saved summary (with its "table") of a run that reached total_steps, else None."""
    path = os.path.join(config.run_dir, SUMMARY_FILE)
    if not os.path.exists(path) or config.total_steps not in _logged_eval_steps(config.run_dir):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
        with open(os.path.join(config.run_dir, SUMMARY_TABLE_FILE)) as f:
            return summary | {"table": f.read().rstrip("\n")}
    except (ValueError, OSError) as error:  # unreadable: the run evaluates its last step again and rewrites it
        say(f"{path} or {SUMMARY_TABLE_FILE} is unreadable ({error}); writing them again")
        return None


def train(config: TrainConfig, *, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Run (or resume) the RL training of `config` on `devices` (default: all, on every
    process of a multi-host job); returns the summary (see `summary_table`)."""
    start_time = time.time()
    trainer, policy = set_up(config, devices)
    state, ref_params, run, start_step = restore_or_initialize(trainer, policy)
    finished = _finished_summary(config) if start_step == config.total_steps else None
    if finished is not None:  # a rerun of a finished run: nothing to redo, nothing appended
        trainer.checkpointer.close()
        say(f"the run in {config.run_dir} is finished (step {start_step} of {config.total_steps}): nothing to do; "
            "raise total_steps to train further")
        return finished
    # rows past the checkpoint are dropped on resume (MetricsLogger): their evaluations are redone
    logged_evals = {s for s in _logged_eval_steps(config.run_dir) if s <= start_step} if start_step else set()
    programs = compile_programs(trainer, state)
    logger = MetricsLogger(config.run_dir, config.logging, total_steps=config.total_steps, start_step=start_step,
                           config=config)
    samples = SamplesWriter(config.run_dir, start_step=start_step, max_mb=config.logging.samples_max_mb,
                            enabled=jax.process_index() == 0)
    if start_step:
        logger.write(f"resuming from step {start_step} of {config.total_steps} "
                     f"({os.path.join(trainer.checkpointer.directory, str(start_step))})")
    else:
        logger.log(0, eval_log(run.before, config.eval.benchmark))  # the baseline of the curves
    if start_step and _periodic_eval_due(config, start_step) and start_step not in logged_evals:
        # stopped between the checkpoint of start_step and its evaluation: evaluate it now
        logger.log(start_step, eval_log(trainer.evaluate(state, f"step {start_step}, missing from the log"),
                                        config.eval.benchmark))
    if run.warmstart and start_step == 0:
        logger.write(f"warm start: loss {run.warmstart['warmstart/loss_first']:.3f} -> "
                     f"{run.warmstart['warmstart/loss_last']:.3f}; held-out accuracy {run.before['accuracy']:.3f}")
    stop = StopSignals.install()  # SIGTERM: finish the step, save it, stop (train/signals.py)
    stage = None
    try:
        for step in range(start_step, config.total_steps):
            trainer.checkpointer.check()  # a failed background save stops the run here
            state, metrics = rl_step(trainer, programs, state, ref_params, step, samples)
            beat(f"rl step {step + 1}")
            stage = _announce_stage(trainer.iterator, stage, step + 1, config.data.curriculum.num_stages, logger.write)
            scalars = logger.log(step + 1, metrics)
            count_step(run, scalars, state, step=step + 1, config=config, checkpointer=trainer.checkpointer)
            warn_without_signal(run, scalars, step + 1, verifier=config.data.verifier, write=logger.write)
            warn_if_uniform(run, scalars, step + 1, trainer.vocab_size, logger.write)
            after_step(trainer, state, ref_params, run, logger, step + 1, stop)
        if config.total_steps == 0:  # the warm start alone, saved as checkpoint 0 (to export, to start runs from)
            after_step(trainer, state, ref_params, run, logger, 0, stop)
        after = trainer.evaluate(state, "final")
        if config.total_steps not in logged_evals:  # logged once, also when only the summary was lost
            logger.log(config.total_steps, eval_log(after, config.eval.benchmark))
    finally:
        logger.close()
        try:
            trainer.checkpointer.close()
        finally:
            stop.uninstall()  # after the last checkpoint is written: a SIGTERM meanwhile waits for it
    summary = summarize(config, run, after, trainer.checkpointer, logger.run_seconds(since=start_time))
    if jax.process_index() == 0:
        save_summary(summary, config.run_dir)
    return summary


def _announce_stage(iterator, shown: int | None, step: int, num_stages: int, write) -> int | None:
    """Write a line when the SENT curriculum's stage changes; returns the stage shown."""
    stage = getattr(iterator, "stage", None)
    if stage is not None and stage != shown:
        write(f"curriculum: stage {stage + 1} of {num_stages} (semantic entropy low to high) "
              f"from step {step}")
    return stage


# --------------------------------------------------------------------------- summary

SUMMARY_FILE, SUMMARY_TABLE_FILE = "summary.json", "summary.txt"


def save_summary(summary: dict[str, Any], run_dir: str) -> None:
    """RUN_DIR/summary.json (the summary without its table) and RUN_DIR/summary.txt (the table)."""
    from entropy_rl.jsonl import write_text_atomic

    values = {key: value for key, value in summary.items() if key != "table"}
    write_text_atomic(os.path.join(run_dir, SUMMARY_FILE), json.dumps(values, indent=2) + "\n")
    write_text_atomic(os.path.join(run_dir, SUMMARY_TABLE_FILE), summary["table"] + "\n")


def method_label(config: TrainConfig) -> str:
    """The loss with what makes it a method (GRPO: "ppo_clip, grpo advantages, seq-mean-token-mean")."""
    a = config.algorithm
    return (f"{a.name}, {a.advantage_estimator} advantages, {a.loss.loss_agg_mode}"
            f"{', dynamic sampling' if a.dynamic_sampling else ''}")


def summarize(config: TrainConfig, run: Run, after: dict, checkpointer: Checkpointer, seconds: float) -> dict[str, Any]:
    """The run's summary dict; its "table" entry is the text the CLI prints."""
    before = run.before
    diff = after["accuracy"] - before["accuracy"]
    diff_ci = bootstrap_interval(np.asarray(after["per_problem"]), paired_with=np.asarray(before["per_problem"]))
    summary = {
        "method": config.algorithm.name,
        "steps": config.total_steps,
        "wall_clock_s": seconds,
        "accuracy_before": before["accuracy"], "accuracy_before_ci": list(before["ci"]),
        "accuracy_after": after["accuracy"], "accuracy_after_ci": list(after["ci"]),
        "accuracy_gain": diff, "accuracy_gain_ci": list(diff_ci),
        "heldout_problems": after["num_problems"], "heldout_distinct_problems": after["distinct_problems"],
        "heldout_samples_per_problem": after["n"],
        "entropy_start": run.entropy_start, "entropy_end": run.entropy_end,
        "masked_fraction": run.masked_fraction_sum / max(run.steps_logged, 1),
        "skipped_updates": run.num_skipped,
        "checkpoints": checkpointer.directory, "checkpoint_steps": checkpointer.all_steps(),
        "metrics": os.path.join(config.run_dir, METRICS_FILE),
        "tensorboard": os.path.join(config.run_dir, TENSORBOARD_SUBDIR) if config.logging.tensorboard else None,
    }
    summary["table"] = summary_table(summary, config)
    return summary


def summary_table(s: dict[str, Any], config: TrainConfig) -> str:
    """The end-of-run table: held-out accuracy before/after with 95% CIs, entropy, masking, paths."""
    pct = lambda x: f"{100 * x:5.1f}%"  # noqa: E731
    ci = lambda c: f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"  # noqa: E731
    separated = s["accuracy_gain_ci"][0] > 0 or s["accuracy_gain_ci"][1] < 0
    flag = losses.get_policy_loss(config.algorithm.name).flag_metric
    rows = [
        ("method", f"{method_label(config)} on {config.data.dataset}, {s['steps']} steps, "
                   f"{s['wall_clock_s'] / 60:.1f} min"),
        (f"held-out accuracy ({s['heldout_problems']} problems ({s['heldout_distinct_problems']} distinct) x "
         f"{s['heldout_samples_per_problem']} samples, T={config.eval.temperature:g})", ""),
        ("  before", f"{pct(s['accuracy_before'])}  95% CI {ci(s['accuracy_before_ci'])}"),
        ("  after", f"{pct(s['accuracy_after'])}  95% CI {ci(s['accuracy_after_ci'])}"),
        ("  gain (paired)", f"{100 * s['accuracy_gain']:+.1f} pts  95% CI {ci(s['accuracy_gain_ci'])}"
                            f"{'  (significant)' if separated else '  (not significant)'}"),
        ("entropy start -> end", "none (no RL step)" if s["entropy_start"] is None
                                 else f"{s['entropy_start']:.4f} -> {s['entropy_end']:.4f}"),
        ("masked-token fraction", f"{s['masked_fraction']:.3g}" + (f" (loss/{flag}, mean over steps)" if flag else " (none)")),
        ("skipped updates", str(s["skipped_updates"])),
        ("checkpoints", f"{s['checkpoints']} (steps {s['checkpoint_steps']})"),
        ("metrics", s["metrics"] + (f", TensorBoard {s['tensorboard']}" if s["tensorboard"] else "")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)
