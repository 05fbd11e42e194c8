"""SIGKILL-and-resume: a run killed right after a checkpoint and started again with the same
command ends with parameters (and logged metrics) bitwise equal to a run that never stopped.

Runs `entropy-rl train` in subprocesses on a tiny setup (1-layer policy, 4 prompts x 2
responses of 8 tokens, 3 steps, a checkpoint every step). An entropy bonus makes every
update move the parameters even though a random policy earns no reward, so the comparison is
not vacuous: the updates depend on the sampled responses (PRNG keys) and the prompts (data
iterator state), which the resumed run must restore exactly.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl.policy import load_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config, save_config
from entropy_rl.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 3
TINY_RUN = [
    f"total_steps={TOTAL_STEPS}", "checkpoint.every_steps=1", "checkpoint.max_to_keep=5",
    "data.batch_size=4", "data.num_synthetic_problems=64", "algorithm.mini_batch_size=2",
    "algorithm.loss.entropy_coef=0.01", "rollout.n=2", "rollout.max_new_tokens=8", "rollout.response_bucket=8",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
    "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16",
    "warmstart.enabled=false", "eval.num_problems=8", "logging.progress_bar=false", "logging.tensorboard=false",
]


def _start(run_dir: Path, config_file: Path, cache_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="",
               # the three runs share compiled programs (the same programs give the same bits)
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    command = [sys.executable, "-m", "entropy_rl.cli", "train", "--config", str(config_file), f"run_dir={run_dir}"]
    return subprocess.Popen(command, env=env, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def _kill_after_first_checkpoint(process: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL as soon as checkpoint 1 is complete (Orbax renames the finished step directory)."""
    first = run_dir / "checkpoints" / "1"
    deadline = time.time() + 600
    while not first.is_dir():
        assert process.poll() is None, f"the run ended before its first checkpoint:\n{process.communicate()[0][-3000:]}"
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL


def _params(run_dir: Path, step: int) -> list[np.ndarray]:
    policy, _ = load_policy(run_dir, step=step)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    cache, config_file = tmp_path / "jax_cache", tmp_path / "config.yaml"
    save_config(load_config(overrides=TINY_RUN), config_file)  # every value written out: the 3 runs agree
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _finish(_start(uninterrupted, config_file, cache))  # also fills the compilation cache: the next two start fast
    _kill_after_first_checkpoint(_start(killed, config_file, cache), killed)
    with ck.Checkpointer(killed, read_only=True) as checkpoints:
        reached = checkpoints.latest_step()
    assert reached < TOTAL_STEPS, "killed too late: nothing left to resume"
    output = _finish(_start(killed, config_file, cache))  # the same command again: resumes from `reached`
    assert "after" in output

    with ck.Checkpointer(killed, read_only=True) as checkpoints:
        assert checkpoints.latest_step() == TOTAL_STEPS
    final, expected = _params(killed, TOTAL_STEPS), _params(uninterrupted, TOTAL_STEPS)
    for got, want in zip(final, expected, strict=True):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    # not vacuous: the steps after the kill did change the parameters
    assert any(a.tobytes() != b.tobytes() for a, b in zip(_params(uninterrupted, reached), expected))
    # the resumed run's log reads as if it had never stopped
    assert _without_timings(read_metrics(killed)) == _without_timings(read_metrics(uninterrupted))
