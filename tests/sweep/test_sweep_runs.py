"""`entropy-rl sweep` end to end, and `entropy-rl compare` on its runs: a grid of 2 methods x
2 seeds of 3-step runs on the tiny setup of tests/train/test_resume.py.

The sweep is stopped (SIGTERM) inside its second run, after the first has finished, and started
again with the same command: the finished run is skipped (its files untouched), the stopped one
resumed, and it ends with parameters and metrics bitwise equal to the same run trained without
a stop. The runs are shared by the tests of this module (module-scoped fixture): about 5 runs
of ~1 min each on a loaded 2-core machine, hence slow.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropy_rl.sweep import compare
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.metrics import read_metrics

from tests.train.test_resume import REPO, TINY_RUN, TOTAL_STEPS, _params, _without_timings

RUN = [a for a in TINY_RUN if not a.startswith("eval.num_problems=")] + ["eval.num_problems=4", "eval.n=2"]
SWEEP = ["--methods", "grpo,stapo", "--seeds", "0,1", *RUN]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sweep-runs")]


def _env(cache: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="",
                JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "entropy_rl.cli", *map(str, args)]


def _stop_inside(process: subprocess.Popen, run_dir: Path) -> str:
    """SIGTERM to the sweep as soon as `run_dir` has checkpoint 1; its output."""
    deadline = time.time() + 900
    while not (run_dir / "checkpoints" / "1").is_dir():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 15 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    return output


@pytest.fixture(scope="session")  # session: other modules interleave on a worker
def sweep(tmp_path_factory):
    """(sweep dir, output of the stopped sweep, output of the resumed one, files of the finished
    first run before the rerun, the uninterrupted twin of the stopped run)."""
    root = tmp_path_factory.mktemp("sweep")
    out, env = root / "out", _env(root / "jax_cache")
    first = subprocess.Popen(_command("sweep", out, *SWEEP), env=env, cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    stopped = _stop_inside(first, out / "grpo-seed1")
    finished_files = {p.name: p.read_bytes() for p in (out / "grpo-seed0").iterdir() if p.is_file()}
    with ck.Checkpointer(out / "grpo-seed1", read_only=True) as checkpoints:
        reached = checkpoints.latest_step()
    resumed = subprocess.run(_command("sweep", out, *SWEEP, "--jobs", 2), env=env, cwd=root, capture_output=True,
                             text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    [command] = [r["command"] for r in json.loads((out / "sweep.json").read_text())["runs"] if r["name"] == "grpo-seed1"]
    twin = root / "twin"
    subprocess.run(_command(*command[:-1], f"run_dir={twin}"), env=env, cwd=root, check=True, capture_output=True,
                   timeout=900)
    return out, stopped, resumed.stdout, finished_files, reached, twin


def test_stopped_sweep_skips_finished_runs_and_resumes_the_stopped_one(sweep):
    out, stopped, resumed, finished_files, reached, _ = sweep
    assert "[1/4] grpo-seed0: finished: held-out" in stopped
    assert "[2/4] grpo-seed1: stopped after" in stopped and "sweep stopped by signal 15" in stopped
    assert "stapo" not in stopped  # nothing started after the stop
    assert 1 <= reached < TOTAL_STEPS, "stopped too late: nothing left to resume"

    assert "[1/4] grpo-seed0: already finished, skipped: held-out" in resumed
    assert "[2/4] grpo-seed1: resumed" in resumed
    for index, name in ((2, "grpo-seed1"), (3, "stapo-seed0"), (4, "stapo-seed1")):
        assert f"[{index}/4] {name}: finished: held-out" in resumed
    assert {p.name: p.read_bytes() for p in (out / "grpo-seed0").iterdir() if p.is_file()} == finished_files
    log = (out / "grpo-seed1" / "train.log").read_text()
    assert log.count("$ entropy-rl train --config") == 2 and f"resuming from step {reached}" in log


def test_resumed_run_equals_an_uninterrupted_one(sweep):
    out, *_, twin = sweep
    got, want = _params(out / "grpo-seed1", TOTAL_STEPS), _params(twin, TOTAL_STEPS)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert _without_timings(read_metrics(out / "grpo-seed1")) == _without_timings(read_metrics(twin))


def test_compare_of_the_sweep(sweep, tmp_path):
    out, *_ = sweep
    result = compare.compare([out], tmp_path)
    assert list(result["methods"]) == ["grpo", "stapo"] and not result["excluded"]
    for method in ("grpo", "stapo"):
        got = result["methods"][method]
        assert got["seeds"] == [0, 1]
        for seed, values in zip((0, 1), got["per_seed"]):
            run = out / f"{method}-seed{seed}"
            summary = json.loads((run / "summary.json").read_text())
            entropy = [row["entropy/mean"] for row in read_metrics(run) if "entropy/mean" in row]
            assert values["accuracy_gain"] == summary["accuracy_after"] - summary["accuracy_before"]
            assert (values["entropy_start"], values["entropy_end"], values["entropy_min"]) == \
                (entropy[0], entropy[-1], min(entropy))
        entropy_end = [v["entropy_end"] for v in got["per_seed"]]
        assert got["intervals"]["entropy_end"]["mean"] == pytest.approx(sum(entropy_end) / 2, rel=1e-12)
    spurious = [row["loss/spurious_fraction"] for row in read_metrics(out / "stapo-seed0")
                if "loss/spurious_fraction" in row]
    assert result["methods"]["stapo"]["per_seed"][0]["flagged_fraction"] == pytest.approx(sum(spurious) / len(spurious))
    report = (tmp_path / "report.md").read_text()
    assert "| grpo | 0, 1 |" in report and "| grpo | stapo | 0, 1 |" in report
    for name in ("accuracy", "entropy", "entropy_percentiles"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
