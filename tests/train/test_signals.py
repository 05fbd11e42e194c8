"""Stopping on signals: SIGTERM saves the current step and exits 143 with one message naming
it; Ctrl-C inside a save is held until the save is handed to the background; the resumed
command refuses a changed config naming the key."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from entropy_rl.train import checkpoint as ck
from entropy_rl.train.signals import Preempted, StopSignals, deferred_interrupts

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = [
    "total_steps=40", "checkpoint.every_steps=1000", "data.batch_size=2", "data.num_synthetic_problems=16",
    "algorithm.mini_batch_size=2", "rollout.n=2", "rollout.max_new_tokens=4", "rollout.response_bucket=4",
    "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=1", "model.head_dim=16", "warmstart.enabled=false", "eval.num_problems=2", "eval.n=1",
    "logging.progress_bar=false", "logging.tensorboard=false",
]


def test_deferred_interrupts_hold_ctrl_c_until_the_block_ends():
    # Python's own Ctrl-C handler first: another test in this worker may have left another
    # (an unclosed asyncio runner's, which cancels its task instead of raising).
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupts():
                signal.raise_signal(signal.SIGINT)
                finished.append("the save's synchronous part")
        assert finished == ["the save's synchronous part"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outside)


def test_stop_signals_turn_sigterm_into_a_request():
    class Saved:  # what finish_if_requested needs of a Checkpointer
        directory, waited = "/runs/x/checkpoints", False

        def wait(self):
            self.waited = True

        def latest_step(self):
            return 7

    previous = signal.getsignal(signal.SIGTERM)
    stop = StopSignals.install()
    try:
        stop.finish_if_requested(6, Saved())  # nothing requested: carries on
        signal.raise_signal(signal.SIGTERM)  # the process is still alive: the handler recorded it
        assert stop.requested == signal.SIGTERM
        saved = Saved()
        with pytest.raises(Preempted, match="stopped by SIGTERM after step 7: checkpoint 7 is saved in /runs/x") as info:
            stop.finish_if_requested(7, saved)
        assert saved.waited and info.value.exit_code == 143
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == previous


def _train(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    command = [sys.executable, "-m", "entropy_rl.cli", "train", f"run_dir={run_dir}", *TINY_RUN, *overrides]
    return subprocess.Popen(command, env=env, cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_refuses_a_changed_config(tmp_path):
    run_dir = tmp_path / "run"
    process = _train(run_dir)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # step 1 is done: the loop runs
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no step within 5 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-3000:]
    with ck.Checkpointer(run_dir, read_only=True) as checkpoints:
        saved = checkpoints.latest_step()
    assert saved is not None and 1 <= saved < 40  # no regular checkpoint before step 1000: SIGTERM's own
    assert f"stopped by SIGTERM after step {saved}: checkpoint {saved} is saved in {run_dir}/checkpoints" in stderr
    assert "Traceback" not in stderr

    # The same run resumed under another learning rate is refused, naming the key; total_steps may change.
    process = _train(run_dir, "total_steps=50", "optimizer.learning_rate=0.05")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr[-3000:]
    assert f"checkpoint {saved} in {run_dir}/checkpoints was saved under another config" in stderr
    refused = stderr.split("resuming would change:")[1].split("Revert")[0]
    assert "optimizer.learning_rate" in refused and "total_steps" not in refused
    assert "Traceback" not in stderr
