"""`train(config) -> summary`: the RL loop, one step top to bottom (docs/design.md, "Data flow of one RL step").

    set_up                  mesh, policy, data, sampling and update settings (`train.trainer`)
    restore_or_initialize   the last checkpoint, or a fresh state and the held-out "before"
    build_programs          the update's programs, built once (`train.programs`)
    for each step, rl_step:
        prompts (iterator / curriculum) -> rollout: n responses per prompt
          -> rewards (verifier, DAPO overlong penalty) -> group advantages (`train.experience`)
          [-> dynamic sampling: drop zero-variance groups, sample more, at most k rounds]
          -> old log-probs and entropy (one no-grad forward), reference log-probs (when used)
          -> ppo_epochs x mini-batches of the compiled train step
    count_step, after_step  metrics and counters (`train.step_checks`) -> checkpoint (every N
                            steps and the last) / held-out eval (`entropy_rl.eval.heldout`)
    summarize               the end-of-run table and summary files (`train.summary`)

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
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropy_rl import losses
from entropy_rl.eval.heldout import eval_log
from entropy_rl.parallel import mesh_compiler_options
from entropy_rl.parallel.watchdog import beat
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.experience import collect_groups, group_advantages, rollout_checks, rollout_metrics, update_batch
from entropy_rl.train.metrics import MetricsLogger
from entropy_rl.train.programs import Programs, build_programs
from entropy_rl.train.progress import loss_reporter, say
from entropy_rl.train.samples import SamplesWriter, sample_records, sample_rows_of
from entropy_rl.train.signals import StopSignals
from entropy_rl.train.step import TrainState, create_train_state, token_statistics
from entropy_rl.train.step_checks import Run, count_step, warn_if_uniform, warn_without_signal
from entropy_rl.train.summary import finished_summary, logged_eval_steps, save_summary, summarize
from entropy_rl.train.trainer import Trainer, set_up
from entropy_rl.train.warmstart import warm_start


@functools.cache
def _token_statistics(mesh: jax.sharding.Mesh):
    """`token_statistics` compiled for the mesh's platform."""
    return jax.jit(token_statistics, compiler_options=mesh_compiler_options(mesh))


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


def restore_or_initialize(trainer: Trainer, policy: nnx.Module) -> tuple[TrainState, Any, Run, int]:
    """(train state, reference parameters or None, counters, first step): the last checkpoint
    when config.resume finds one; else a fresh state (after the warm start when configured)
    and the held-out accuracy before training."""
    config = trainer.config
    state = create_train_state(policy, trainer.update.optimizer, trainer.mesh)
    needs_reference = losses.get_policy_loss(config.algorithm.name).needs_reference(config.algorithm.policy_loss())
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
        state = create_train_state(policy, trainer.update.optimizer, trainer.mesh)
        ref_params = _copy(state.params) if ref_params is not None else None
    run.before = trainer.evaluate(state, "before training")
    return state, ref_params, run, 0


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
    metrics["rollout/logp_mismatch"], tokens = rollout_checks(old_logp, groups, batch, trainer.mesh)
    metrics["rollout/prompt_length"] = batch.prompt_tokens.shape[1]  # the batch's prompt bucket
    flag_metric = losses.get_policy_loss(a.name).flag_metric
    if samples is not None and config.logging.samples_per_step:
        rows = sample_rows_of(len(advantages), config.logging.samples_per_step)
        samples.write(sample_records(step + 1, batch, entropy, rows=rows, rewards=groups.rewards,
                                     correct=groups.correct, answers=groups.answers, references=groups.references,
                                     tokenizer=trainer.tokenizer,
                                     loss_name=a.name, loss_config=trainer.update.step_config.loss,
                                     flag=flag_metric and f"loss/{flag_metric}", mesh=trainer.mesh, state=state,
                                     temperature=trainer.update.step_config.temperature,
                                     chunk_size=trainer.update.step_config.chunk_size))

    per_update = []
    update_key = jax.random.fold_in(step_key, 1)
    for epoch in range(a.ppo_epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(update_key, epoch), len(advantages)))
        for k in range(trainer.update.mini_batches):
            rows = order[k * trainer.update.mini_rows:(k + 1) * trainer.update.mini_rows]
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


def train(config: TrainConfig, *, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Run (or resume) the RL training of `config` on `devices` (default: all, on every
    process of a multi-host job); returns the summary (see `summary_table`)."""
    start_time = time.time()
    trainer, policy = set_up(config, devices)
    state, ref_params, run, start_step = restore_or_initialize(trainer, policy)
    finished = finished_summary(config) if start_step == config.total_steps else None
    if finished is not None:  # a rerun of a finished run: nothing to redo, nothing appended
        trainer.checkpointer.close()
        say(f"the run in {config.run_dir} is finished (step {start_step} of {config.total_steps}): nothing to do; "
            "raise total_steps to train further")
        return finished
    # rows past the checkpoint are dropped on resume (MetricsLogger): their evaluations are redone
    logged_evals = {s for s in logged_eval_steps(config.run_dir) if s <= start_step} if start_step else set()
    programs = build_programs(state, trainer.mesh, trainer.update)
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
