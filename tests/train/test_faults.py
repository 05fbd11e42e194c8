"""Issue 29: what a fault campaign broke, one test per item (checkpoint content, run directory,
signals, logs, lengths, messages, file modes). Small checkpoints of the 2-layer policy of
test_checkpoint.py; the runs are the tiny in-process runs of test_finished_runs.py."""

import os
import stat

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
