"""Issue 29: what a fault campaign broke, one test per item (checkpoint content, run directory,
signals, logs, lengths, messages, file modes). Small checkpoints of the 2-layer policy of
test_checkpoint.py; the runs are the tiny in-process runs of test_finished_runs.py."""

import json
import os
import stat
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl import jsonl
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import replace as replace_config

from tests.train.test_checkpoint import _config, _run_state, _two_steps, policy  # noqa: F401 - a fixture


def _flip_bytes(step_dir, count=64):
    """XOR `count` bytes in the middle of the largest parameter file (the values still decode)."""
    largest = max((p for p in step_dir.glob("params/**/d/*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0x5A
    largest.write_bytes(bytes(data))


def test_flipped_bytes_are_a_damaged_checkpoint_for_training_and_readers(tmp_path, policy, capsys):  # noqa: F811
    config, params, train_state = _two_steps(tmp_path, policy)
    _flip_bytes(tmp_path / "checkpoints" / "2")
    with ck.Checkpointer(tmp_path, read_only=True) as reader, pytest.raises(ck.CheckpointCorrupt, match="checksum"):
        reader.restore_params(params, step=2)
    ck.load_policy(tmp_path)  # a reader skips it, naming it
    assert "checkpoint 2 in" in capsys.readouterr().err
    messages = []
    with ck.Checkpointer(tmp_path, max_to_keep=5) as loader:
        restored = loader.resume(params=params, train_state=train_state, config=config, log=messages.append)
    assert restored.step == 1 and "checksum mismatch" in messages[0] and "corrupt-2-" in messages[0]


def test_checksums_are_the_same_from_the_host_and_from_shards_on_a_mesh():
    mesh = jax.make_mesh((8,), ("fsdp",))
    values = np.random.default_rng(0).standard_normal((16, 12)).astype(np.float32)
    sharded = jax.device_put(values, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp")))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    lanes, finite = ck._device_digest_program(replicated)(sharded)
    assert ck._digest(values) == (f"{int(lanes[0]):08x}{int(lanes[1]):08x}", bool(finite))
    changed = values.copy()
    changed.view(np.uint32)[3, 4] ^= 1  # one bit
    assert ck._digest(changed)[0] != ck._digest(values)[0]
    bf16 = jnp.asarray(values, jnp.bfloat16)
    assert ck._digest(bf16)[0] != ck._digest(values)[0] and ck._digest(np.asarray(bf16))[0] == ck._digest(bf16)[0]


def test_total_steps_below_the_latest_checkpoint_is_refused_with_its_step(tmp_path, policy):  # noqa: F811
    config, params, train_state = _two_steps(tmp_path, policy)
    with ck.Checkpointer(tmp_path) as loader, pytest.raises(ck.ResumeConfigError, match=r"checkpoint 2 in .* past "
                                                                                        r"total_steps=1: set total_steps=2"):
        loader.resume(params=params, train_state=train_state, config=replace_config(config, total_steps=1))
    with ck.Checkpointer(tmp_path) as loader:  # at the checkpoint: resumed (a finished run)
        assert loader.resume(params=params, train_state=train_state, config=replace_config(config, total_steps=2)).step == 2


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_rewritten_run_files_get_the_mode_of_the_umask_not_0600(tmp_path, umask, mode):
    from entropy_rl.train.config import load_config, save_config
    from entropy_rl.train.samples import SamplesWriter

    previous = os.umask(umask)
    try:
        jsonl.append_rows(tmp_path / "samples.jsonl", [{"step": 1}, {"step": 2}])
        SamplesWriter(str(tmp_path), start_step=1, max_mb=1, enabled=True)  # a resume: rows past step 1 dropped
        jsonl.rewrite_rows(tmp_path / "metrics.jsonl", [{"step": 1}])
        save_config(load_config(overrides=[f"run_dir={tmp_path}"]), tmp_path / "config.yaml")
    finally:
        os.umask(previous)
    assert jsonl.read_rows(tmp_path / "samples.jsonl") == [{"step": 1}]
    for name in ("samples.jsonl", "metrics.jsonl", "config.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_one_writer_per_run_directory_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    from entropy_rl.train import cli, rundir

    messages = []
    with rundir.hold_run_dir(tmp_path, log=messages.append):
        with pytest.raises(rundir.RunDirLocked, match=rf"in use by another training run, pid {os.getpid()} on "):
            with rundir.hold_run_dir(tmp_path):
                pass
        # the CLI: one line, before anything is built
        assert cli.main([f"run_dir={tmp_path}", "warmstart.enabled=false"]) == 1
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "use another run_dir" in err and "Traceback" not in err
    assert messages == [] and (tmp_path / rundir.LOCK_FILE).read_text() == ""
    # a killed run's record: taken over, with a line saying so
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps({"host": "h", "pid": _dead_pid(), "started": 0}))
    with rundir.hold_run_dir(tmp_path, log=messages.append):
        assert json.loads((tmp_path / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(messages) == 1 and "taking over the lock of pid" in messages[0] and "no longer running" in messages[0]


def test_resume_false_moves_every_file_of_the_old_run_aside(tmp_path, policy):  # noqa: F811
    _two_steps(tmp_path, policy)
    old_files = ("metrics.jsonl", "samples.jsonl", "summary.json", "summary.txt", "config.yaml")
    for name in old_files:
        (tmp_path / name).write_text(name)
    (tmp_path / "tensorboard").mkdir()
    messages = []
    moved = tmp_path / ck.set_aside_previous_run(tmp_path, log=messages.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [moved.name]
    assert all((moved / name).read_text() == name for name in old_files)
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["1", "2"] and "resume=false" in messages[0]


def test_every_checkpoint_damaged_says_it_starts_over_and_moves_the_history_aside(tmp_path, policy):  # noqa: F811
    config, params, train_state = _two_steps(tmp_path, policy)
    for step in (1, 2):
        _flip_bytes(tmp_path / "checkpoints" / str(step))
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n')
    messages = []
    with ck.Checkpointer(tmp_path, max_to_keep=5) as loader:
        assert loader.resume(params=params, train_state=train_state, config=config, log=messages.append) is None
        loader.save(1, params=params, train_state=train_state, data_state={}, config=config)  # the new run saves
    assert "no intact checkpoint left (steps [2, 1] are damaged): starting over from step 0" in messages[-1]
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
    assert len(moved) == 1 and (moved[0] / "metrics.jsonl").read_text() == '{"step": 2}\n'
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "checkpoints" / "1").is_dir()
