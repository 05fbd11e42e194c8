"""The end of a run: the summary dict (held-out accuracy before / after with bootstrap
intervals, entropy, masking, paths), the table the CLI prints, RUN_DIR/summary.json and
RUN_DIR/summary.txt, and the saved summary of a finished run (a rerun returns it as is)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from entropy_rl import losses
from entropy_rl.eval.heldout import bootstrap_interval
from entropy_rl.train.checkpoint import Checkpointer
from entropy_rl.train.config import TrainConfig
from entropy_rl.train.metrics import METRICS_FILE, TENSORBOARD_SUBDIR, read_metrics
from entropy_rl.train.progress import say
from entropy_rl.train.step_checks import Run


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
        ("seed", f"{config.seed}, one run; over seeds (mean, 95% interval, paired tests): "
                 f"entropy-rl sweep DIR --methods {config.algorithm.name} --seeds 0,1,2, then entropy-rl compare DIR"),
        ("checkpoints", f"{s['checkpoints']} (steps {s['checkpoint_steps']})"),
        ("metrics", s["metrics"] + (f", TensorBoard {s['tensorboard']}" if s["tensorboard"] else "")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows)


def logged_eval_steps(run_dir: str) -> set[int]:
    """The steps of RUN_DIR/metrics.jsonl that have a held-out evaluation row."""
    return {row["step"] for row in read_metrics(run_dir) if "eval/accuracy" in row}


def finished_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The saved summary (with its "table") of a run that reached total_steps, else None."""
    path = os.path.join(config.run_dir, SUMMARY_FILE)
    if not os.path.exists(path) or config.total_steps not in logged_eval_steps(config.run_dir):
        return None
    try:
        with open(path) as f:
            summary = json.load(f)
        with open(os.path.join(config.run_dir, SUMMARY_TABLE_FILE)) as f:
            return summary | {"table": f.read().rstrip("\n")}
    except (ValueError, OSError) as error:  # unreadable: the run evaluates its last step again and rewrites it
        say(f"{path} or {SUMMARY_TABLE_FILE} is unreadable ({error}); writing them again")
        return None

