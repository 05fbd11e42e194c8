"""`train(config) -> summary`: the RL loop, one step top to bottom (DESIGN.md's data flow).

    prompts (iterator / curriculum) -> rollout: n responses per prompt
      -> rewards (verifier, DAPO overlong penalty) -> group advantages
      [-> dynamic sampling: drop zero-variance groups, sample more, at most k rounds]
      -> old log-probs and entropy (one no-grad forward), reference log-probs (when used)
      -> ppo_epochs x mini-batches of the compiled train step
      -> metrics -> checkpoint (every N steps and the last) / held-out eval

Every random choice of step s comes from fold_in(key(seed), s), and the data iterator's
state is checkpointed, so a run killed at any point and restarted continues exactly as an
uninterrupted run would (bitwise on the CPU). Shapes are static: prompts are padded to one
length for the whole run and a step always updates on data.batch_size groups, so the
sampler and the train step compile once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl import losses
from entropy_rl.data import LEVELS, Problem, PromptIterator, default_instruction, format_prompt, load_problems, synthetic_problems
from entropy_rl.eval.metrics import benchmark_metrics
from entropy_rl.parallel import COMPILER_OPTIONS, make_mesh
from entropy_rl.rewards import extract_boxed, get_verifier
from entropy_rl.rollout import Rollout, generate
from entropy_rl.train.checkpoint import Checkpointer, build_policy
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.metrics import METRICS_FILE, TENSORBOARD_SUBDIR, MetricsLogger
from entropy_rl.train.step import (StepConfig, TrainState, UpdateBatch, create_train_state, no_grad_logprobs,
                                   make_optimizer, make_train_step, token_statistics)
from entropy_rl.train.warmstart import warm_start

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
_token_statistics = jax.jit(token_statistics, compiler_options=COMPILER_OPTIONS)


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
    """The training split: the built-in task, or a dataset file / directory."""
    d = config.data
    if d.dataset == "synthetic":
        return synthetic_problems(d.num_synthetic_problems, seed=config.seed, levels=synthetic_levels(d.synthetic_levels))
    return list(load_problems(d.dataset, problem_key=d.problem_key, answer_key=d.answer_key, on_bad_row=d.on_bad_row))


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
    from entropy_rl.data.curriculum import CurriculumIterator

    return CurriculumIterator(problems, c.ranking_file, config.data.batch_size, seed=config.seed,
                              num_stages=c.num_stages, epochs_per_stage=c.epochs_per_stage)


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
    """G groups of n responses (host numpy); row i belongs to group i // n."""

    rollout: Rollout
    correct: np.ndarray  # [G n] verifier reward (1 = correct)
    rewards: np.ndarray  # [G n] reward used for the advantage (with the overlong penalty)
    answers: list  # [G n] extracted answers (None = no \boxed{})
    verifier_failures: int = 0  # checks that raised or timed out (reward 0) in the sampled batches

    def select(self, groups: np.ndarray, n: int) -> "Groups":
        rows = (np.asarray(groups)[:, None] * n + np.arange(n)[None]).reshape(-1)
        rollout = Rollout(**{f.name: getattr(self.rollout, f.name)[rows] for f in dataclasses.fields(Rollout)})
        return Groups(rollout, self.correct[rows], self.rewards[rows], [self.answers[i] for i in rows],
                      self.verifier_failures)

    @staticmethod
    def concatenate(parts: Sequence["Groups"]) -> "Groups":
        rollout = Rollout(**{f.name: np.concatenate([getattr(p.rollout, f.name) for p in parts])
                             for f in dataclasses.fields(Rollout)})
        return Groups(rollout, np.concatenate([p.correct for p in parts]), np.concatenate([p.rewards for p in parts]),
                      [a for p in parts for a in p.answers], sum(p.verifier_failures for p in parts))


def overlong_penalty(lengths: np.ndarray, *, max_length: int, buffer: int, factor: float) -> np.ndarray:
    """DAPO's soft overlong punishment [N]: 0 up to max_length - buffer, then falling linearly
    to -factor at max_length."""
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    excess = np.clip(lengths - (max_length - buffer), 0, buffer)
    return (-factor * excess / buffer).astype(np.float32)


def sample_groups(model, problems: Sequence[Problem], encode, tokenizer, sampling, key, *, config: TrainConfig,
                  mesh) -> Groups:
    """n responses per problem, verified and rewarded."""
    rollout = generate(model, [encode(p) for p in problems], sampling, key, mesh=mesh)
    responses = [tokenizer.decode(row[:length], skip_special_tokens=True)
                 for row, length in zip(rollout.tokens, rollout.lengths)]
    truths = [p.answer for p in problems for _ in range(sampling.n)]
    verdict = get_verifier(config.data.verifier)(responses, truths, timeout_s=config.data.reward_timeout_s)
    correct = np.asarray(verdict.rewards, np.float32)
    a = config.algorithm
    rewards = correct + overlong_penalty(rollout.lengths, max_length=sampling.max_new_tokens,
                                         buffer=a.overlong_buffer_len, factor=a.overlong_penalty_factor)
    return Groups(rollout, correct, rewards, [extract_boxed(r) for r in responses],
                  verdict.num_errors + verdict.num_timeouts)


def collect_groups(model, iterator, encode, tokenizer, sampling, key, *, config: TrainConfig, mesh
                   ) -> tuple[Groups, Groups, int]:
    """(the step's update groups, every group sampled this step, sampling rounds).

    Without dynamic sampling: one batch of data.batch_size prompts. With it (DAPO): keep the
    groups whose rewards differ, sample further batches until data.batch_size such groups
    or algorithm.max_sampling_rounds rounds, then fill with zero-variance groups / trim to
    data.batch_size groups, so the update always has the same shape.
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


def rollout_metrics(groups: Groups, sampled: Groups, n: int) -> dict[str, float]:
    """Reward, accuracy, lengths and the online semantic entropy of the sampled groups."""
    from entropy_rl.semantic_entropy import group_semantic_entropy

    r = sampled.rollout
    answers = [sampled.answers[i:i + n] for i in range(0, len(sampled.answers), n)]
    zero_var = np.asarray(losses.zero_variance_groups(jnp.asarray(sampled.rewards.reshape(-1, n))))
    return {
        "reward/mean": float(sampled.rewards.mean()),
        "accuracy": float(sampled.correct.mean()),
        "response_length/mean": float(r.lengths.mean()),
        "response_length/max": float(r.lengths.max()),
        "response_length/truncated_fraction": float(np.mean(~r.stopped)),
        "groups/zero_variance_fraction": float(zero_var.mean()),
        "groups/update_accuracy": float(groups.correct.mean()),
        "reward/verifier_failures": float(sampled.verifier_failures),
        "semantic_entropy/mean": float(np.mean(group_semantic_entropy(answers, exact_match_only=True))),
    }


def update_batch(groups: Groups, advantages: np.ndarray, prompt_length: int) -> UpdateBatch:
    """The groups' rows as an UpdateBatch, prompts left-padded to `prompt_length` (static)."""
    r = groups.rollout
    pad = prompt_length - r.prompt_tokens.shape[1]
    if pad < 0:
        raise ValueError(f"prompt of {r.prompt_tokens.shape[1]} tokens exceeds the run's {prompt_length}")
    zeros = np.zeros(r.tokens.shape, np.float32)
    return UpdateBatch(prompt_tokens=np.pad(r.prompt_tokens, ((0, 0), (pad, 0))),
                       prompt_mask=np.pad(r.prompt_mask, ((0, 0), (pad, 0))), tokens=r.tokens, mask=r.mask,
                       advantages=advantages.astype(np.float32), old_logp=zeros)


# --------------------------------------------------------------------------- evaluation


def bootstrap_interval(per_problem: np.ndarray, *, seed: int = 0, paired_with: np.ndarray | None = None
                       ) -> tuple[float, float]:
    """95% percentile bootstrap interval over problems of mean(per_problem) (or of the mean
    paired difference per_problem - paired_with)."""
    values = per_problem if paired_with is None else per_problem - paired_with
    rng = np.random.default_rng(seed)
    resamples = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(resamples, tail)), float(np.percentile(resamples, 100 - tail))


def heldout_eval(model, tokenizer, problems: Sequence[Problem], encode, key, *, config: TrainConfig, mesh
                 ) -> dict[str, Any]:
    """Held-out accuracy: eval.n samples per problem at eval.temperature, prompts formatted as
    in training. {"accuracy", "ci" (95% bootstrap over problems), "per_problem", ...}."""
    e = config.eval
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids, pad_token_id=tokenizer.pad_token_id,
                                              temperature=e.temperature, top_p=e.top_p, n=e.n,
                                              max_new_tokens=e.max_new_tokens or config.rollout.max_new_tokens)
    groups = sample_groups(model, problems, encode, tokenizer, sampling, key, config=config, mesh=mesh)
    correct = groups.correct.reshape(len(problems), e.n)
    per_problem = correct.mean(axis=1)
    return {"accuracy": float(per_problem.mean()), "ci": bootstrap_interval(per_problem),
            "scores": benchmark_metrics(correct.astype(int).tolist()),
            "per_problem": per_problem.tolist(), "num_problems": len(problems), "n": e.n,
            "distinct_problems": len({p.problem for p in problems}),
            "temperature": e.temperature, "response_length": float(groups.rollout.lengths.mean())}


def eval_log(result: dict[str, Any], config: TrainConfig) -> dict[str, float]:
    """`eval/accuracy` and `eval/<benchmark>/{accuracy, avg@k, pass@k}` of a `heldout_eval`."""
    scores = {f"eval/{config.eval.benchmark}/{key}": value for key, value in result["scores"].items()
              if "@" in key or key == "accuracy"}
    return {"eval/accuracy": result["accuracy"], **scores}


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
    """What the loop holds besides the arrays: host-side counters, checkpointed as JSON."""

    consecutive_nonfinite: int = 0
    num_skipped: int = 0
    entropy_start: float | None = None
    entropy_end: float | None = None
    masked_fraction_sum: float = 0.0
    steps_logged: int = 0
    before: dict | None = None
    warmstart: dict | None = None


def _needs_reference(config: TrainConfig) -> bool:
    loss = config.algorithm.loss
    return loss.ref_kl_coef > 0 or (config.algorithm.name == "sent" and loss.sent_variant == "paper")


def _flag_metric(config: TrainConfig) -> str | None:
    flag = losses.get_policy_loss(config.algorithm.name).flag_metric
    return None if flag is None else f"loss/{flag}"


def _train_state_tree(state: TrainState, ref_params) -> dict:
    tree = {"opt_state": state.opt_state, "step": state.step, "num_skipped": state.num_skipped}
    if ref_params is not None:
        tree["ref_params"] = ref_params
    return tree


def _prompt_length(problems: Sequence[Problem], encode, bucket: int) -> int:
    longest = max(len(encode(p)) for p in problems)
    return int(math.ceil(longest / bucket) * bucket)


def _mean_metrics(per_update: list[dict]) -> dict[str, jax.Array]:
    return {key: jnp.mean(jnp.stack([m[key] for m in per_update])) for key in per_update[0]}


def train(config: TrainConfig, *, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Run (or resume) the RL training of `config` on `devices` (default: all); returns the
    summary (see `summary_table`)."""
    start_time = time.time()
    mesh = make_mesh(config.mesh, devices=devices)
    policy, tokenizer = build_policy(config.model, seed=config.seed, mesh=mesh)
    encode = PromptEncoder(config, tokenizer)
    problems = training_problems(config)
    heldout = heldout_problems(config)
    iterator = make_iterator(config, problems)
    seed_key = jax.random.key(config.seed)
    eval_key = jax.random.fold_in(seed_key, 2**31 - 1)  # the same samples' randomness before and after
    prompt_length = _prompt_length(problems, encode, config.rollout.prompt_bucket)
    sampling = config.rollout.sampling_config(stop_token_ids=tokenizer.stop_token_ids,
                                              pad_token_id=tokenizer.pad_token_id, prompt_bucket=prompt_length)
    a = config.algorithm
    mini_batches = config.data.batch_size // a.mini_batch_size
    optimizer, schedule = make_optimizer(config.optimizer, config.total_steps * a.ppo_epochs * mini_batches)
    mini_rows = a.mini_batch_size * sampling.n
    step_config = StepConfig(a.name, a.loss, temperature=sampling.temperature or 1.0,
                             chunk_size=config.model.logprob_chunk_size,
                             num_micro_batches=mini_rows // a.micro_batch_size if a.micro_batch_size else 1)
    state = create_train_state(policy, optimizer, mesh)
    checkpointer = Checkpointer.from_config(config)
    run = Run()
    ref_params = jax.tree.map(jnp.copy, state.params) if _needs_reference(config) else None
    restored = checkpointer.restore(params=state.params, train_state=_train_state_tree(state, ref_params)) \
        if config.resume else None
    if restored is not None:
        t = restored.train_state
        state = state.replace(params=restored.params, opt_state=t["opt_state"], step=t["step"],
                              num_skipped=t["num_skipped"])
        ref_params = t.get("ref_params")
        iterator.load_state_dict(restored.data_state["iterator"])
        run = Run(**restored.data_state["run"])
        start_step = restored.step
    else:
        start_step = 0
        if config.warmstart.enabled and config.model.hf_path is None and config.warmstart.steps > 0:
            w = config.warmstart
            run.warmstart = warm_start(policy, problems, encode, tokenizer, steps=w.steps, batch_size=w.batch_size,
                                       learning_rate=w.learning_rate, seed=config.seed, mesh=mesh)
            state = create_train_state(policy, optimizer, mesh)
            ref_params = jax.tree.map(jnp.copy, state.params) if ref_params is not None else None
        run.before = heldout_eval(state.model(), tokenizer, heldout, encode, eval_key, config=config, mesh=mesh)
    train_step = make_train_step(state, mesh, optimizer=optimizer, schedule=schedule, config=step_config)
    logprobs = functools.partial(no_grad_logprobs, state.graphdef, mesh=mesh, temperature=step_config.temperature,
                                 chunk_size=step_config.chunk_size,
                                 num_micro_batches=step_config.num_micro_batches * mini_batches)
    flag_metric = _flag_metric(config)
    logger = MetricsLogger(config.run_dir, config.logging, total_steps=config.total_steps, start_step=start_step,
                           config=config)
    if run.warmstart and start_step == 0:
        logger.write(f"warm start: loss {run.warmstart['warmstart/loss_first']:.3f} -> "
                     f"{run.warmstart['warmstart/loss_last']:.3f}; held-out accuracy {run.before['accuracy']:.3f}")
    try:
        for step in range(start_step, config.total_steps):
            step_start = time.time()
            step_key = jax.random.fold_in(seed_key, step)
            groups, sampled, rounds = collect_groups(state.model(), iterator, encode, tokenizer, sampling,
                                                     jax.random.fold_in(step_key, 0), config=config, mesh=mesh)
            advantages = group_advantages(groups.rewards, sampling.n, config)
            batch = update_batch(groups, advantages, prompt_length)
            rollout_time = time.time() - step_start
            old_logp, entropy = logprobs(state.params, batch)
            batch = jax.device_get(batch.replace(  # host arrays: mini-batches are sliced on the host
                old_logp=old_logp, ref_logp=None if ref_params is None else logprobs(ref_params, batch)[0]))
            metrics = dict(_token_statistics(old_logp, entropy, jnp.asarray(batch.advantages), jnp.asarray(batch.mask)))
            metrics["rollout/logp_mismatch"] = jnp.max(jnp.abs(old_logp - groups.rollout.logprobs) * batch.mask)
            per_update = []
            update_key = jax.random.fold_in(step_key, 1)
            for epoch in range(a.ppo_epochs):
                order = np.asarray(jax.random.permutation(jax.random.fold_in(update_key, epoch), len(advantages)))
                for k in range(mini_batches):
                    rows = order[k * mini_rows:(k + 1) * mini_rows]
                    mini = jax.tree.map(lambda x: x[rows], batch)
                    state, update_metrics = train_step(state, mini, jax.random.fold_in(update_key, 1000 * epoch + k))
                    per_update.append(update_metrics)
            update_metrics = _mean_metrics(per_update)
            jax.block_until_ready(state.params)
            step_time = time.time() - step_start
            metrics |= {k if k.startswith("loss") or k in ("grad_norm", "lr", "skipped") else f"update/{k}": v
                        for k, v in update_metrics.items()}
            if flag_metric is not None:
                metrics["loss/masked_fraction"] = update_metrics[flag_metric]
            metrics |= rollout_metrics(groups, sampled, sampling.n)
            metrics |= {"time/rollout": rollout_time, "time/update": step_time - rollout_time, "time/step": step_time,
                        "time/tokens_per_s": float(groups.rollout.lengths.sum() + batch.prompt_mask.sum()) / step_time,
                        "sampling/rounds": rounds}
            scalars = logger.log(step + 1, metrics)
            run.steps_logged += 1
            run.entropy_start = scalars["entropy/mean"] if run.entropy_start is None else run.entropy_start
            run.entropy_end = scalars["entropy/mean"]
            run.masked_fraction_sum += scalars.get("loss/masked_fraction", 0.0)
            skipped = int(round(scalars["skipped"] * len(per_update)))
            run.num_skipped += skipped
            run.consecutive_nonfinite = run.consecutive_nonfinite + skipped if skipped == len(per_update) else 0
            if run.consecutive_nonfinite >= config.max_consecutive_nonfinite:
                raise FloatingPointError(
                    f"{run.consecutive_nonfinite} non-finite updates in a row at step {step + 1}: stopping. The last "
                    f"good checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory}; lower "
                    "optimizer.learning_rate or check the rewards and the model's dtype")
            last = step + 1 == config.total_steps
            if last or (step + 1) % config.checkpoint.every_steps == 0:
                checkpointer.save(step + 1, params=state.params, train_state=_train_state_tree(state, ref_params),
                                  data_state={"iterator": iterator.state_dict(), "run": dataclasses.asdict(run)},
                                  config=config)
            if config.eval.every_steps and (step + 1) % config.eval.every_steps == 0 and not last:
                result = heldout_eval(state.model(), tokenizer, heldout, encode, eval_key, config=config, mesh=mesh)
                logger.log(step + 1, eval_log(result, config))
        after = heldout_eval(state.model(), tokenizer, heldout, encode, eval_key, config=config, mesh=mesh)
        logger.log(config.total_steps, eval_log(after, config))
    finally:
        logger.close()
        checkpointer.close()
    return summarize(config, run, after, checkpointer, time.time() - start_time)


# --------------------------------------------------------------------------- summary


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
    flag = _flag_metric(config)
    rows = [
        ("method", f"{s['method']} on {config.data.dataset}, {s['steps']} steps, {s['wall_clock_s'] / 60:.1f} min"),
        (f"held-out accuracy ({s['heldout_problems']} problems ({s['heldout_distinct_problems']} distinct) x "
         f"{s['heldout_samples_per_problem']} samples, T={config.eval.temperature:g})", ""),
        ("  before", f"{pct(s['accuracy_before'])}  95% CI {ci(s['accuracy_before_ci'])}"),
        ("  after", f"{pct(s['accuracy_after'])}  95% CI {ci(s['accuracy_after_ci'])}"),
        ("  gain (paired)", f"{100 * s['accuracy_gain']:+.1f} pts  95% CI {ci(s['accuracy_gain_ci'])}"
                            f"{'  (significant)' if separated else '  (not significant)'}"),
        ("entropy start -> end", f"{s['entropy_start']:.4f} -> {s['entropy_end']:.4f}"),
        ("masked-token fraction", f"{s['masked_fraction']:.5f}" + (f" ({flag}, mean over steps)" if flag else " (none)")),
        ("skipped updates", str(s["skipped_updates"])),
        ("checkpoints", f"{s['checkpoints']} (steps {s['checkpoint_steps']})"),
        ("metrics", s["metrics"] + (f", TensorBoard {s['tensorboard']}" if s["tensorboard"] else "")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)
