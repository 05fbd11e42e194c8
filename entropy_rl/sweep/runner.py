"""`entropy-rl sweep OUT_DIR --methods grpo,stapo --seeds 0,1,2 [--set key=v1,v2] [--jobs K]`.

A grid of training runs: every (method, override values, seed) is a normal run directory
OUT_DIR/<method>[-<key>_<value>...]-seed<S> (e.g. `grpo-learning_rate_3e-6-seed0`), trained by
a child process `entropy-rl train --config [BASE...] METHOD [overrides] <key>=<value> seed=S
run_dir=...` whose output goes to RUN_DIR/train.log. A crashed run is reported and the sweep
goes on; the exit code is 1 when any run failed.

- Methods: YAML paths, or names of configs/<name>.yaml or configs/study/<name>.yaml (looked
  up in the working directory, then in the repository of this package). `--base` files are
  merged under every method's file; the trailing `key.sub=value` overrides win over both.
- Resumable: a run whose RUN_DIR/summary.json reports its total_steps is skipped; any other
  existing run directory is resumed by `entropy-rl train` (bitwise, from its last checkpoint).
- Manifest: OUT_DIR/sweep.json records every run (name, method, seed, grid values, the exact
  command). A rerun with a larger grid extends it; a rerun that would give an existing run
  name another command (other base, overrides or method file) is refused, naming the run.
- Signals: SIGINT / SIGTERM send SIGTERM to the running children, which save a checkpoint at
  the end of their step and exit; the sweep then exits 128 + signal. A second signal kills the
  children at once (they resume from their last checkpoint).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from entropy_rl.jsonl import write_text_atomic

MANIFEST_FILE = "sweep.json"
LOG_FILE = "train.log"
SUMMARY_FILE = "summary.json"
CONFIG_DIRS = ("configs", "configs/study")
REPO = Path(__file__).resolve().parents[2]


class SweepError(ValueError):
    """A sweep that cannot start; the message names the argument, file or run at fault."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its directory name, method label, seed, grid values, and its config:
    the YAML files (merged in order) and the `key.sub=value` overrides (run_dir and seed last)."""

    name: str
    method: str
    seed: int
    settings: dict[str, str]
    configs: list[str]
    overrides: list[str]

    @property
    def command(self) -> list[str]:
        """The `entropy-rl` arguments that train this run."""
        return ["train", *(a for path in self.configs for a in ("--config", path)), *self.overrides]

    def record(self) -> dict:
        """The run's manifest entry."""
        return {"name": self.name, "method": self.method, "seed": self.seed, "settings": self.settings,
                "command": self.command}


# --------------------------------------------------------------------------- the grid

def resolve_method(method: str) -> Path:
    """The config file of a method: an existing path, else <dir>/<method>.yaml for each of
    CONFIG_DIRS under the working directory, then under this package's repository."""
    if Path(method).is_file():
        return Path(method).resolve()
    for root in (Path.cwd(), REPO):
        for directory in CONFIG_DIRS:
            path = root / directory / f"{method}.yaml"
            if path.is_file():
                return path.resolve()
    raise SweepError(f"--methods: {method!r} is neither a file nor a name in {', '.join(CONFIG_DIRS)}")


def method_label(method: str) -> str:
    """A method's label in run names: the config file's stem (`configs/study/grpo.yaml` -> grpo)."""
    return Path(method).name.removesuffix(".yaml").removesuffix(".yml")


def parse_grid(assignments: list[str]) -> dict[str, list[str]]:
    """`["optimizer.learning_rate=1e-6,3e-6"]` -> {"optimizer.learning_rate": ["1e-6", "3e-6"]}."""
    grid: dict[str, list[str]] = {}
    for item in assignments:
        key, sep, values = item.partition("=")
        split = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not split:
            raise SweepError(f"--set {item!r}: expected key.sub=value1,value2,...")
        if key.strip() in grid:
            raise SweepError(f"--set {key.strip()!r} is given twice")
        grid[key.strip()] = split
    return grid


def run_name(method: str, settings: dict[str, str], seed: int) -> str:
    """`grpo-learning_rate_3e-6-seed0`: the method, each grid key's last part and value, the seed."""
    parts = [method, *(f"{key.rsplit('.', 1)[-1]}_{value}" for key, value in settings.items()), f"seed{seed}"]
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", "-".join(parts))


def build_grid(out_dir: Path, methods: list[str], seeds: list[int], grid: dict[str, list[str]],
               base: list[str], overrides: list[str]) -> list[RunSpec]:
    """Every (method, grid values, seed) run, in that nesting order, with its train command."""
    bases = [str(Path(b).resolve()) for b in base]
    runs = []
    for method in methods:
        config = str(resolve_method(method))
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values))
            for seed in seeds:
                name = run_name(method_label(method), settings, seed)
                runs.append(RunSpec(name, method_label(method), seed, settings, [*bases, config],
                                    [*overrides, *(f"{k}={v}" for k, v in settings.items()), f"seed={seed}",
                                     f"run_dir={out_dir / name}"]))
    names = [r.name for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"two runs would share the directory {duplicates[0]!r}; give the methods distinct file names")
    return runs


def validate_commands(runs: list[RunSpec]) -> None:
    """Load every run's config (no compute): a bad key or value stops the sweep before it starts."""
    from entropy_rl.configuration import ConfigError, load_command_config
    from entropy_rl.train.config import TrainConfig

    for run in runs:
        try:
            load_command_config(TrainConfig, run.configs, run.overrides, check_paths=False)
        except ConfigError as e:
            raise SweepError(f"run {run.name}: {e}") from None


def merge_manifest(out_dir: Path, runs: list[RunSpec]) -> list[dict]:
    """The manifest's runs extended by `runs` (refusing a name recorded with another command)."""
    path = out_dir / MANIFEST_FILE
    recorded = json.loads(path.read_text())["runs"] if path.exists() else []
    by_name = {r["name"]: r for r in recorded}
    for run in runs:
        old = by_name.get(run.name)
        if old is not None and old["command"] != run.command:
            changed = sorted(set(run.command) ^ set(old["command"]))
            raise SweepError(f"{path} records run {run.name} with another command (differs in {changed}); "
                             "use a new OUT_DIR for another setup")
    return recorded + [r.record() for r in runs if r.name not in by_name]


# --------------------------------------------------------------------------- running

def finished_summary(run_dir: Path) -> dict | None:
    """RUN_DIR/summary.json when it reports the run's total_steps (from RUN_DIR/config.yaml), else None."""
    import yaml

    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        total_steps = yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return summary if summary.get("steps") == total_steps else None


def _outcome(summary: dict) -> str:
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    return f"held-out {100 * before:.1f}% -> {100 * after:.1f}% ({100 * (after - before):+.1f} pts)"


class Sweep:
    """Runs the children K at a time; `stop(signum)` ends them (see the module docstring)."""

    def __init__(self, out_dir: Path, runs: list[RunSpec], jobs: int):
        self.out_dir, self.runs, self.jobs = out_dir, runs, jobs
        self.running: dict[str, tuple[subprocess.Popen, float, int]] = {}
        self.stopping: int | None = None
        self.failed: list[str] = []

    def say(self, index: int, name: str, text: str) -> None:
        print(f"[{index}/{len(self.runs)}] {name}: {text}", flush=True)

    def stop(self, signum: int, frame=None) -> None:
        kill = self.stopping is not None
        self.stopping = signum
        for process, _, _ in self.running.values():
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)

    def start(self, index: int, run: RunSpec) -> None:
        run_dir = self.out_dir / run.name
        resuming = (run_dir / "checkpoints").is_dir()
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / LOG_FILE, "a")
        log.write(f"$ entropy-rl {' '.join(run.command)}\n")
        log.flush()
        process = subprocess.Popen([sys.executable, "-m", "entropy_rl.cli", *run.command], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,  # Ctrl-C reaches only the sweep
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.running[run.name] = (process, time.time(), index)
        self.say(index, run.name, "resumed" if resuming else "started")
        if self.stopping is not None:  # the signal came while it was being started
            process.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        for name, (process, started, index) in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[name]
            minutes = (time.time() - started) / 60
            summary = finished_summary(self.out_dir / name)
            if code == 0 and summary is not None:
                self.say(index, name, f"finished: {_outcome(summary)}, {minutes:.1f} min")
            elif self.stopping is not None:
                self.say(index, name, f"stopped after {minutes:.1f} min (exit {code}); rerun the sweep to resume it")
            else:
                self.failed.append(name)
                self.say(index, name, f"FAILED (exit {code}) after {minutes:.1f} min; see {self.out_dir / name / LOG_FILE}")

    def run(self) -> int:
        pending = []
        for index, run in enumerate(self.runs, 1):
            summary = finished_summary(self.out_dir / run.name)
            if summary is not None:
                self.say(index, run.name, f"already finished, skipped: {_outcome(summary)}")
            else:
                pending.append((index, run))
        while pending or self.running:
            while pending and len(self.running) < self.jobs and self.stopping is None:
                self.start(*pending.pop(0))
            time.sleep(0.1)
            self.reap()
            if self.stopping is not None and not self.running:
                break
        if self.stopping is not None:
            print(f"sweep stopped by signal {self.stopping}; the same command resumes it", flush=True)
            return 128 + self.stopping
        print(f"sweep: {len(self.runs) - len(self.failed)} of {len(self.runs)} runs finished"
              f"{', failed: ' + ', '.join(self.failed) if self.failed else ''}; report: entropy-rl compare {self.out_dir}",
              flush=True)
        return 1 if self.failed else 0


# --------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-rl sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  entropy-rl sweep runs/study --methods grpo,stapo,sent --seeds 0,1,2 \\\n"
        "      --set optimizer.learning_rate=1e-4,3e-4 --jobs 2 total_steps=100")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the sweep's directory (one run directory per run)")
    parser.add_argument("--methods", required=True, help="comma-separated config files or names in configs/, configs/study/")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a grid axis: one run per value (repeat for a product of axes)")
    parser.add_argument("--base", action="append", default=[], metavar="YAML",
                        help="a config merged under every method's file (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="overrides for every run")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    out_dir = Path(args.out_dir).resolve()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.jobs < 1 or not seeds:
            raise SweepError("--jobs must be >= 1 and --seeds must name at least one seed")
        runs = build_grid(out_dir, [m.strip() for m in args.methods.split(",") if m.strip()], seeds,
                          parse_grid(args.set), args.base, args.overrides)
        validate_commands(runs)
        manifest = merge_manifest(out_dir, runs)
    except (SweepError, ValueError) as e:
        print(f"entropy-rl sweep: {e}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / MANIFEST_FILE, json.dumps({"runs": manifest}, indent=2) + "\n")
    sweep = Sweep(out_dir, runs, args.jobs)
    previous = {s: signal.signal(s, sweep.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return sweep.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
