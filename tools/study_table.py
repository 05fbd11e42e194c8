"""The study's table from its run directories (until `entropy-rl compare` is available).

    python tools/study_table.py /work/study-runs [--threshold 0.05]

Per method over the seeds whose run finished (RUN_DIR/summary.json): mean and 95% t-interval
of held-out accuracy before / after, the paired gain, entropy at start / min / end
(metrics.jsonl's entropy/mean), the flag fraction (loss/masked_fraction, mean over steps),
and seconds per run; unfinished runs are listed with their last logged step.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib

import numpy as np
from scipy import stats


def interval(values: list[float]) -> str:
    """`mean [low, high]` (95% Student-t over seeds; the mean alone for one seed)."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return f"{values.mean():.3f}"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return f"{values.mean():.3f} [{values.mean() - half:.3f}, {values.mean() + half:.3f}]"


def read_run(run_dir: pathlib.Path) -> dict | None:
    """The finished run's numbers, or None when summary.json is missing."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    entropy = [row["entropy/mean"] for row in rows if "entropy/mean" in row]
    flags = [row["loss/masked_fraction"] for row in rows if "loss/masked_fraction" in row]
    return {"before": summary["accuracy_before"], "after": summary["accuracy_after"],
            "gain": summary["accuracy_gain"], "h_start": entropy[0], "h_min": min(entropy),
            "h_end": entropy[-1], "flag": float(np.mean(flags)) if flags else 0.0,
            "minutes": summary["wall_clock_s"] / 60}


def last_step(run_dir: pathlib.Path) -> int | None:
    path = run_dir / "metrics.jsonl"
    steps = [json.loads(line).get("step") for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return max((s for s in steps if s is not None), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir")
    args = parser.parse_args()
    finished, running = collections.defaultdict(dict), []
    for run_dir in sorted(pathlib.Path(args.study_dir).glob("*-s*")):
        method, seed = run_dir.name.rsplit("-s", 1)
        if method == "warmstart":
            continue
        run = read_run(run_dir)
        if run is None:
            running.append(f"{run_dir.name} (last logged step {last_step(run_dir)})")
        else:
            finished[method][int(seed)] = run
    columns = ["before", "after", "gain", "h_start", "h_min", "h_end", "flag", "minutes"]
    print("| method | seeds | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for method, runs in finished.items():
        seeds = sorted(runs)
        cells = [interval([runs[s][c] for s in seeds]) for c in columns]
        print(f"| {method} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    if running:
        print("\nnot finished: " + ", ".join(running))


if __name__ == "__main__":
    main()
