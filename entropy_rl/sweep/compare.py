"""`entropy-rl compare RUN_DIR... | SWEEP_DIR [-o OUT_DIR]`: one report of methods x seeds.

Reads what runs write (RUN_DIR/config.yaml, metrics.jsonl, summary.json) and writes
OUT_DIR/report.md, OUT_DIR/compare.json (every number of the report) and PNG figures
(accuracy.png, entropy.png, entropy_percentiles.png, and the mechanism figures of the runs'
samples.jsonl: `mechanism`); with --html also OUT_DIR/report.html, the report as a section of
the runs' `entropy-rl inspect` page (figures embedded, token browser over every run). Default
OUT_DIR: SWEEP_DIR/compare, or compare/ beside the first run.

Runs are grouped into methods: by the sweep manifest (OUT_DIR/sweep.json, see `runner`) when
given a sweep directory, else by their configs, runs whose configs differ only in the seed and
bookkeeping keys (run_dir, logging, checkpoint) being one method. Per method, over seeds
(`stats.t_interval`: mean and 95% Student-t interval): held-out accuracy before / after and
the gain after - before (paired within each run), mean entropy at the first logged step / its
minimum / the last step, steps to collapse (`stats.steps_to_collapse`, --collapse-fraction),
the method's flagged-token fraction (the loss registry's `flag_metric`, mean over steps) and
the late-stage drop (best held-out accuracy minus the final one). Between every two methods:
the paired t-test of the gains over their common seeds (`stats.paired_t_test`).

Refused (one line naming the runs, exit 2): no runs, runs of different tasks (a `data.*` or
`eval.*` key that defines the problems, their check or the held-out set differs). A run that
has not finished (no summary.json for its total_steps) is excluded, named on stderr and in the
report.
"""

from __future__ import annotations

import argparse
import base64
import functools
import html
import itertools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from entropy_rl.configuration import config_to_dict, flatten, move_renamed_keys
from entropy_rl.eval.plot import grid_columns, metric_series, read_metrics  # also selects the Agg backend
from entropy_rl.losses import get_policy_loss
from entropy_rl.sweep import mechanism, stats
from entropy_rl.sweep.runner import MANIFEST_FILE, finished_summary

# dotted config keys that do not define the task (what is trained on and how it is checked)
NOT_TASK_KEYS = ("data.batch_size", "data.curriculum.", "data.on_bad_row", "data.reward_timeout_s", "eval.every_steps")
TASK_PREFIXES = ("data.", "eval.")
# keys that do not make two runs different methods
BOOKKEEPING_KEYS = ("seed", "run_dir", "resume", "resume_allow_changes", "logging.", "checkpoint.")
PERCENTILE_KEY = re.compile(r"^entropy/p\d+$")


class CompareError(ValueError):
    """Input that `compare` refuses; the message names the run(s)."""


@dataclass
class Run:
    """One finished run: its directory, method label, seed, flat config, summary and metric rows."""

    path: Path
    method: str
    seed: int
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict] = field(repr=False)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of the rows holding a finite `key`."""
        return metric_series(self.rows, key)


# --------------------------------------------------------------------------- reading runs

def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Path], dict[Path, str]]:
    """(run directories, {run: method label from a sweep manifest}) of the command's arguments:
    run directories, or one sweep directory (its manifest's runs, else its subdirectories that
    are runs)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and not _is_run(paths[0]):
        root = paths[0]
        if (root / MANIFEST_FILE).is_file():
            recorded = json.loads((root / MANIFEST_FILE).read_text())["runs"]
            labels = {root / r["name"]: " ".join([r["method"], *(f"{k.rsplit('.', 1)[-1]}={v}"
                                                                  for k, v in r["settings"].items())])
                      for r in recorded}
            return list(labels), labels
        runs = sorted(p for p in root.iterdir() if _is_run(p)) if root.is_dir() else []
        if not runs:
            raise CompareError(f"no runs in {root} (no sweep.json, no subdirectory with config.yaml and metrics.jsonl)")
        return runs, {}
    for path in paths:
        if not _is_run(path):
            raise CompareError(f"{path} is not a run directory (no config.yaml and metrics.jsonl)")
    return paths, {}


@functools.cache
def _default_config() -> dict[str, Any]:
    """The flat default config: the values of keys a run's config.yaml predates."""
    from entropy_rl.train.config import load_config

    return flatten(config_to_dict(load_config(None)))


@functools.cache
def _renamed_keys() -> dict[str, str]:
    """{old dotted key: new} of the keys renamed since a run's config.yaml may have been written."""
    from entropy_rl.train.config import TrainConfig

    return dict(TrainConfig.renamed_keys)


def load_run(path: Path, method: str = "") -> Run | None:
    """The finished run in `path`, or None when it has not finished. Its flat config holds
    the defaults of keys added after it was written (a run older than `stall_timeout_s`
    groups with a newer one that leaves it at its default) and today's names of keys renamed
    since (`TrainConfig.renamed_keys`)."""
    summary = finished_summary(path)
    if summary is None:
        return None
    saved, _, _ = move_renamed_keys(yaml.safe_load((path / "config.yaml").read_text()), _renamed_keys())
    config = _default_config() | flatten(saved)
    return Run(path, method, int(config.get("seed", 0)), config, summary, read_metrics(path))


def _is_key(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def check_same_task(runs: Sequence[Run]) -> None:
    """CompareError naming two runs and the task keys (`data.*`, `eval.*`) whose values differ."""
    first = runs[0]
    for run in runs[1:]:
        keys = sorted(k for k in set(first.config) | set(run.config)
                      if _is_key(k, TASK_PREFIXES) and not _is_key(k, NOT_TASK_KEYS)
                      and first.config.get(k) != run.config.get(k))
        if keys:
            differences = "; ".join(f"{k}: {first.config.get(k)!r} vs {run.config.get(k)!r}" for k in keys)
            raise CompareError(f"runs {first.path} and {run.path} are of different tasks ({differences})")


def group_methods(runs: Sequence[Run], per_seed_keys: Sequence[str] = ()) -> dict[str, list[Run]]:
    """{method label: runs in seed order}. Runs without a label are grouped by their configs
    minus BOOKKEEPING_KEYS and `per_seed_keys` (keys whose values follow the seed, e.g.
    model.hf_path of a per-seed warm start), labelled by the first one's directory name
    without `-seed<N>` / `-s<N>`. A key's name before a rename stands for its new one."""
    ignored = (*BOOKKEEPING_KEYS, *(_renamed_keys().get(key, key) for key in per_seed_keys))
    groups: dict[str, list[Run]] = {}
    by_config: dict[str, str] = {}
    for run in runs:
        if not run.method:
            key = json.dumps({k: v for k, v in run.config.items() if not _is_key(k, ignored)},
                             sort_keys=True, default=str)
            if key not in by_config:
                label = re.sub(r"[-_]?(seed|s)\d+$", "", run.path.name) or run.path.name
                by_config[key] = label if label not in groups else f"{label} ({len(groups) + 1})"
            run.method = by_config[key]
        groups.setdefault(run.method, []).append(run)
    for label, members in groups.items():
        members.sort(key=lambda r: r.seed)
        for a, b in itertools.pairwise(members):
            if a.seed == b.seed:
                raise CompareError(f"runs {a.path} and {b.path} are the same method ({label}) and seed {a.seed}")
    return groups


# --------------------------------------------------------------------------- numbers

def flag_metric(run: Run) -> str | None:
    """The metric key of the run's flagged-token fraction (the loss registry's flag_metric)."""
    flag = get_policy_loss(run.config["algorithm.name"]).flag_metric
    return flag and f"loss/{flag}"


def run_values(run: Run, collapse_fraction: float) -> dict[str, float]:
    """The per-run quantities of the report (module docstring), nan where a run lacks the data."""
    steps, entropy = run.series("entropy/mean")
    _, accuracy = run.series("eval/accuracy")
    flag = flag_metric(run)
    flagged = run.series(flag)[1] if flag else []
    before, after = run.summary["accuracy_before"], run.summary["accuracy_after"]
    return {
        "accuracy_before": before, "accuracy_after": after, "accuracy_gain": after - before,
        "entropy_start": entropy[0] if entropy else math.nan,
        "entropy_min": min(entropy) if entropy else math.nan,
        "entropy_end": entropy[-1] if entropy else math.nan,
        "steps_to_collapse": stats.steps_to_collapse(steps, entropy, collapse_fraction),
        "flagged_fraction": sum(flagged) / len(flagged) if flagged else math.nan,
        "late_stage_drop": stats.late_stage_drop(accuracy),
    }


QUANTITIES = ("accuracy_before", "accuracy_after", "accuracy_gain", "entropy_start", "entropy_min", "entropy_end",
              "steps_to_collapse", "flagged_fraction", "late_stage_drop")


def method_intervals(values: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, stats.Interval]]:
    """{method: {quantity: t_interval over its seeds}} of {method: [run_values per seed]}."""
    return {method: {q: stats.t_interval([v[q] for v in runs]) for q in QUANTITIES} for method, runs in values.items()}


def paired_gain_tests(groups: Mapping[str, Sequence[Run]], values: Mapping[str, Sequence[Mapping[str, float]]]
                      ) -> list[tuple[str, str, list[int], stats.PairedTest]]:
    """(method a, method b, common seeds, paired t-test of gain_a - gain_b) for every two methods."""
    tests = []
    for a, b in itertools.combinations(groups, 2):
        gain_a = {r.seed: v["accuracy_gain"] for r, v in zip(groups[a], values[a])}
        gain_b = {r.seed: v["accuracy_gain"] for r, v in zip(groups[b], values[b])}
        seeds = sorted(set(gain_a) & set(gain_b))
        tests.append((a, b, seeds, stats.paired_t_test([gain_a[s] for s in seeds], [gain_b[s] for s in seeds])))
    return tests


# --------------------------------------------------------------------------- report

def _cell(interval: stats.Interval, scale: float = 1.0, digits: int = 1) -> str:
    if math.isnan(interval.mean):
        return "n/a"
    mean = f"{scale * interval.mean:.{digits}f}"
    if math.isnan(interval.low):
        return mean
    return f"{mean} [{scale * interval.low:.{digits}f}, {scale * interval.high:.{digits}f}]"


def _number(x: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}g}"


def markdown(groups: Mapping[str, Sequence[Run]], intervals: Mapping[str, Mapping[str, stats.Interval]],
             tests: Sequence, excluded: Sequence[Path], collapse_fraction: float, figures: Sequence[str]) -> str:
    """The report's text (tables of `method_intervals` and `paired_gain_tests`, the definitions)."""
    lines = ["# Methods compared", "",
             "Each cell: mean over seeds [95% Student-t interval over seeds, mean +- t(0.975, n-1) s/sqrt(n)]. "
             "Accuracies in % of the held-out set; gain = after - before within each run. Entropy: the "
             "logged mean token entropy (nats) at the first step, its minimum, the last step. Collapse: the first "
             f"step with mean entropy < {collapse_fraction:g} x the first step's (mean over the seeds that "
             "collapsed, k/n of them). Flagged: the method's masked / penalised token fraction (its loss's "
             "flag metric), mean over steps, in % of tokens. Late drop: best held-out accuracy of the run minus its final one, "
             "in points.", "",
             "| method | seeds | acc. before | acc. after | gain (pts) | H start | H min | H end | collapse step "
             "| flagged (%) | late drop (pts) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, runs in groups.items():
        i = intervals[method]
        flags = sorted({f for r in runs if (f := flag_metric(r))})
        collapsed = f"{_cell(i['steps_to_collapse'], digits=0)} ({i['steps_to_collapse'].n}/{len(runs)})"
        flagged = f"{_cell(i['flagged_fraction'], 100, digits=4)} ({', '.join(flags)})" if flags else "none"
        lines.append(f"| {method} | {', '.join(str(r.seed) for r in runs)} | {_cell(i['accuracy_before'], 100)} "
                     f"| {_cell(i['accuracy_after'], 100)} | {_cell(i['accuracy_gain'], 100)} "
                     f"| {_cell(i['entropy_start'], digits=4)} | {_cell(i['entropy_min'], digits=4)} "
                     f"| {_cell(i['entropy_end'], digits=4)} | {collapsed} | {flagged} "
                     f"| {_cell(i['late_stage_drop'], 100)} |")
    lines += ["", "## Paired tests of the gains", "",
              "Paired t-test over the seeds both methods ran (d = gain of A - gain of B per seed, "
              "t = mean(d) / (s_d / sqrt(n)), two-sided p from Student's t with n - 1 degrees of freedom; "
              "n/a with fewer than 2 seeds or no variance in d).", "",
              "| A | B | seeds | mean gain A - B (pts) | t | p |", "|---|---|---|---|---|---|"]
    for a, b, seeds, test in tests:
        lines.append(f"| {a} | {b} | {', '.join(map(str, seeds))} | {_number(100 * test.mean_difference)} "
                     f"| {_number(test.t)} | {_number(test.p)} |")
    lines += ["", "## Runs", ""]
    lines += [f"- {method}: " + ", ".join(f"`{r.path}`" for r in runs) for method, runs in groups.items()]
    if excluded:
        lines += ["", "Excluded (not finished): " + ", ".join(f"`{p}`" for p in excluded)]
    lines += ["", "## Figures", "", *(f"![{name}]({name}.png)" for name in figures), ""]
    return "\n".join(lines)


def figures(groups: Mapping[str, Sequence[Run]]) -> dict[str, Any]:
    """{name: Figure}: held-out accuracy, mean entropy, entropy percentiles; per method the mean
    over seeds with its 95% t-band."""
    percentiles = sorted({k for runs in groups.values() for r in runs for row in r.rows for k in row
                          if PERCENTILE_KEY.match(k)}, key=lambda k: int(k.split("/p")[1]))
    panels = {"accuracy": ["eval/accuracy"], "entropy": ["entropy/mean"], "entropy_percentiles": percentiles}
    made = {}
    for name, keys in panels.items():
        if not keys:
            continue
        columns = grid_columns(len(keys), 3)
        rows = math.ceil(len(keys) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            for index, (method, runs) in enumerate(groups.items()):
                steps, mean, low, high = stats.band([r.series(key) for r in runs])
                if len(steps):
                    ax.plot(steps, mean, color=f"C{index % 10}", label=f"{method} (n={len(runs)})",
                            marker="o" if len(steps) < 30 else None, markersize=3)
                    ax.fill_between(steps, low, high, color=f"C{index % 10}", alpha=0.2)
            ax.set_title(key, fontsize=11)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in axes.flat[len(keys):]:
            figure.delaxes(ax)
        figure.suptitle(f"{name.replace('_', ' ')}: mean over seeds, 95% t-band", fontsize=13)
        figure.tight_layout()
        made[name] = figure
    return made


_IMAGE_LINE = re.compile(r"^!\[([^\]]*)\]\(([^)]+\.png)\)$")


def _inline(text: str) -> str:
    """Markdown inline code and bold as HTML (text escaped)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def report_html(report: str, figure_dir: Path) -> str:
    """The markdown `report` as HTML: headings, pipe tables, bullets, paragraphs, and each
    `![name](file.png)` line as that PNG of figure_dir embedded (base64)."""
    parts, table = [], []
    for line in report.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            parts.append("<table>" + "".join(table) + "</table>")
            table = []
        image = _IMAGE_LINE.match(line)
        if image:
            data = base64.b64encode((figure_dir / image.group(2)).read_bytes()).decode()
            parts.append(f'<p><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}" '
                         'style="max-width:100%"></p>')
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            parts.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            parts.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            parts.append(f"<p>{_inline(line)}</p>")
    return "\n".join(parts)


def write_html(groups: Mapping[str, Sequence[Run]], report: str, out: Path) -> Path:
    """OUT_DIR/report.html: the `entropy-rl inspect` page of every run (labelled
    "<method> s<seed>") with the report as its first extra section."""
    from entropy_rl.inspect import Section, write_page

    runs = [r for rs in groups.values() for r in rs]
    return write_page([r.path for r in runs], out / "report.html", labels=[f"{r.method} s{r.seed}" for r in runs],
                      title="entropy-rl compare", extra_sections=[Section("Comparison", report_html(report, out))])


def compare(paths: Sequence[str | Path], out_dir: str | Path | None = None, *, collapse_fraction: float = 0.5,
            html_page: bool = False, per_seed_keys: Sequence[str] = (),
            warn=lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Write the report of the runs in `paths` (module docstring; `group_methods` for
    per_seed_keys); returns what compare.json holds."""
    run_dirs, labels = find_runs(paths)
    runs, excluded = [], []
    for path in run_dirs:
        run = load_run(path, labels.get(path, "")) if _is_run(path) else None
        if run is None:
            excluded.append(path)
            warn(f"entropy-rl compare: excluding {path}: not finished (no summary.json for its total_steps)")
        else:
            runs.append(run)
    if not runs:
        raise CompareError(f"no finished runs among {', '.join(map(str, run_dirs))}")
    check_same_task(runs)
    groups = group_methods(runs, per_seed_keys)
    values = {m: [run_values(r, collapse_fraction) for r in rs] for m, rs in groups.items()}
    intervals = method_intervals(values)
    tests = paired_gain_tests(groups, values)
    first = Path(paths[0])
    out = Path(out_dir) if out_dir else (first / "compare" if len(paths) == 1 and not _is_run(first)
                                         else first.parent / "compare")
    out.mkdir(parents=True, exist_ok=True)
    made = figures(groups)
    for name, figure in made.items():
        figure.savefig(out / f"{name}.png", dpi=110)
        plt.close(figure)
    section, tokens = mechanism.mechanism_report({m: [r.path for r in rs] for m, rs in groups.items()}, out)
    report = markdown(groups, intervals, tests, excluded, collapse_fraction, list(made)) + "\n" + section
    (out / "report.md").write_text(report)
    if html_page:
        write_html(groups, report, out)
    result = {
        "collapse_fraction": collapse_fraction,
        "methods": {m: {"runs": [str(r.path) for r in groups[m]], "seeds": [r.seed for r in groups[m]],
                        "per_seed": values[m], "intervals": {q: vars(i) for q, i in intervals[m].items()}}
                    for m in groups},
        "paired_gain_tests": [{"a": a, "b": b, "seeds": seeds, **vars(t)} for a, b, seeds, t in tests],
        "excluded": [str(p) for p in excluded],
        "mechanism": tokens,
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    return result | {"out_dir": str(out)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="entropy-rl compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or one sweep directory")
    parser.add_argument("-o", "--output", help="the report's folder (default: SWEEP_DIR/compare or compare/ beside the runs)")
    parser.add_argument("--collapse-fraction", type=float, default=0.5,
                        help="collapse: mean entropy below this fraction of the first step's (default 0.5)")
    parser.add_argument("--per-seed", action="append", default=[], metavar="KEY",
                        help="a config key whose value follows the seed and does not make another method (e.g. "
                        "model.hf_path of a per-seed warm start); repeatable")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: the report on the runs' inspect page (token browser included)")
    args = parser.parse_args(argv)
    try:
        result = compare(args.runs, args.output, collapse_fraction=args.collapse_fraction, html_page=args.html,
                         per_seed_keys=args.per_seed)
    except CompareError as e:
        print(f"entropy-rl compare: {e}", file=sys.stderr)
        return 2
    print(Path(result["out_dir"]) / ("report.html" if args.html else "report.md"))
    return 0
