"""`entropy-rl plot RUN_DIR [RUN_DIR ...]`: PNG figures of training metrics, runs overlaid.

A run directory holds `metrics.jsonl`, one JSON object per step (`step` plus metric keys such
as `reward/mean`, `entropy/p90`, `loss/spurious_fraction`, `eval/aime24/avg@32`). Keys are
grouped into figure families by name, so a new metric shows up without code changes:

| figure | keys |
|---|---|
| reward | `reward...`, `accuracy...` |
| entropy | `entropy...` |
| kl | `kl...`, and keys whose last part has a `kl` word (`loss/approx_kl`) |
| response_length | `response_length...` |
| eval | `eval/...` |
| token_fractions | `loss/...frac...` (masked, penalised, clipped token fractions) |
| <prefix> | any other `<prefix>/...` key |
| misc | any other key without a "/" |

Each family becomes `<output>/<family>.png` with one panel per key and one line per run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from entropy_rl.eval.results import read_jsonl  # noqa: E402

METRICS_FILE = "metrics.jsonl"
# (family, figure title, does the key belong to it); first match wins.
FAMILIES: tuple[tuple[str, str, object], ...] = (
    ("reward", "Reward and accuracy", lambda key: key.startswith(("reward", "accuracy"))),
    ("entropy", "Token entropy", lambda key: key.startswith("entropy")),
    ("kl", "KL divergence", lambda key: key.startswith("kl") or "kl" in key.rsplit("/", 1)[-1].split("_")),
    ("response_length", "Response length (tokens)", lambda key: key.startswith("response_length")),
    ("eval", "Evaluation scores", lambda key: key.startswith("eval/")),
    ("token_fractions", "Masked / penalised / clipped token fractions",
     lambda key: key.startswith("loss/") and "frac" in key),
)
NOT_METRICS = ("step", "time", "timestamp", "epoch")


def family_of(key: str) -> tuple[str, str]:
    """(family name, figure title) of a metric key."""
    for family, title, matches in FAMILIES:
        if matches(key):
            return family, title
    if "/" in key:
        prefix = key.split("/", 1)[0]
        return prefix, prefix.replace("_", " ").capitalize()
    return "misc", "Other metrics"


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl (path to the file or its run directory), one per step.

    Rows of the same step are merged, later values winning (a run resumed from an earlier
    checkpoint logs those steps again; eval scores may come in a row of their own). Rows come
    back sorted by step. A half-written last line is ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    by_step: dict[float, dict] = {}
    for index, row in enumerate(read_jsonl(path)):
        by_step.setdefault(row.get("step", index), {}).update(row)
    return [by_step[step] for step in sorted(by_step)]


def metric_series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `key` holds a finite number."""
    steps, values = [], []
    for index, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(row.get("step", index))
            values.append(float(value))
    return steps, values


def _ema(values: list[float], smoothing: float) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing): s_t = a s_{t-1} + (1 - a) x_t, debiased."""
    smoothed, last, weight = [], 0.0, 0.0
    for value in values:
        last = smoothing * last + (1 - smoothing) * value
        weight = smoothing * weight + (1 - smoothing)
        smoothed.append(last / weight)
    return smoothed


def group_keys(runs: Mapping[str, Sequence[dict]]) -> dict[str, tuple[str, list[str]]]:
    """{family: (title, sorted metric keys)} over every numeric key of every run."""
    candidates = {(key, label) for label, rows in runs.items() for row in rows for key in row if key not in NOT_METRICS}
    keys = sorted({key for key, label in candidates if metric_series(runs[label], key)[0]})
    groups: dict[str, tuple[str, list[str]]] = {}
    for key in keys:
        family, title = family_of(key)
        groups.setdefault(family, (title, []))[1].append(key)
    return groups


def make_figures(runs: Mapping[str, Sequence[dict]], *, smoothing: float = 0.0, max_columns: int = 3) -> dict:
    """One matplotlib Figure per family: a panel per key, a line per run, legends naming the runs.

    Args:
      runs: {run label: metric rows (`read_metrics`)}.
      smoothing: EMA factor in [0, 1) applied to each line (0 = raw values).
      max_columns: panels per figure row.

    Returns:
      {family: Figure}; `len(figure.axes)` is the number of keys in the family.
    """
    figures = {}
    for family, (title, keys) in group_keys(runs).items():
        columns = grid_columns(len(keys), max_columns)
        rows = math.ceil(len(keys) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            _draw_panel(ax, runs, key, smoothing)
        for ax in axes.flat[len(keys) :]:
            figure.delaxes(ax)
        figure.suptitle(title, fontsize=14)
        figure.tight_layout()
        figures[family] = figure
    return figures


def grid_columns(num_panels: int, max_columns: int) -> int:
    """Columns of the panel grid: fewest rows, then fewest empty cells (4 panels -> 2 x 2)."""

    def cost(columns: int) -> tuple[int, int]:
        rows = math.ceil(num_panels / columns)
        return rows, rows * columns - num_panels

    return min(range(1, min(max_columns, num_panels) + 1), key=cost)


def _draw_panel(ax, runs: Mapping[str, Sequence[dict]], key: str, smoothing: float) -> None:
    for run_index, (label, rows) in enumerate(runs.items()):
        steps, values = metric_series(rows, key)
        if not steps:
            continue
        if smoothing > 0:
            values = _ema(values, smoothing)
        # Sparse series (eval every N steps) get markers so single points stay visible.
        marker = "o" if len(steps) < 30 else None
        # One colour per run in every panel, also where another run lacks the key.
        ax.plot(steps, values, label=label, color=f"C{run_index % 10}", marker=marker, markersize=3, linewidth=1.4)
    ax.set_title(key, fontsize=11)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend labels: each run directory's name, or parent/name where two names clash."""
    paths = [Path(d).resolve() for d in run_dirs]
    names = [p.name if p.name != METRICS_FILE else p.parent.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(Path(*p.parts[-2:])) for p in paths]


def plot_runs(run_dirs: Sequence[str | Path], output_dir: str | Path, *, labels: Sequence[str] | None = None,
              smoothing: float = 0.0) -> dict[str, Path]:
    """Write `<output_dir>/<family>.png` for the runs' metrics; return {family: png path}."""
    labels = list(labels) if labels else run_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs")
    runs = {label: read_metrics(d) for label, d in zip(labels, run_dirs)}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for family, figure in make_figures(runs, smoothing=smoothing).items():
        paths[family] = output_dir / f"{family}.png"
        figure.savefig(paths[family], dpi=110)
        plt.close(figure)
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="entropy-rl plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files) to overlay")
    parser.add_argument("--output", help="folder for the PNGs (default: <first run>/plots)")
    parser.add_argument("--labels", help="comma-separated legend labels, one per run (default: folder names)")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing in [0, 1) (default 0 = raw)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.smooth < 1.0:
        parser.error("--smooth must be in [0, 1)")
    first = Path(args.runs[0])
    output = Path(args.output) if args.output else (first if first.is_dir() else first.parent) / "plots"
    labels = args.labels.split(",") if args.labels else None
    try:
        paths = plot_runs(args.runs, output, labels=labels, smoothing=args.smooth)
    except (FileNotFoundError, ValueError) as err:
        print(f"entropy-rl plot: {err}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0
