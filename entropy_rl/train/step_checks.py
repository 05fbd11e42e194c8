"""The run's host-side counters (`Run`, checkpointed as JSON) and the checks on each logged
step: non-finite updates and parameters stop the run; a policy collapsed to uniform, steps
without a learning signal and responses without answers are warned about."""

from __future__ import annotations

import dataclasses

import numpy as np

from entropy_rl.train.checkpoint import Checkpointer, all_finite
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.step import TrainState, non_finite_counts


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
