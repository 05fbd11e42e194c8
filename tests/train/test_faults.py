"""Issue 29: what a fault campaign broke, one test per item (checkpoint content, run directory,
signals, logs, lengths, messages, file modes). Small checkpoints of the 2-layer policy of
test_checkpoint.py; the runs are the tiny in-process runs of test_finished_runs.py."""

import json
import os
import stat
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropy_rl import checkpoints, jsonl
from entropy_rl.policy import load_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config
from entropy_rl.train.config import replace as replace_config

from tests.train.test_resume import REPO
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
    # the flipped bytes decode to other values (the checksum catches them) or, when they land in a
    # chunk's encoding (Orbax's file layout varies from save to save), fail to decode: damaged either way
    with ck.Checkpointer(tmp_path, read_only=True) as reader, \
            pytest.raises(checkpoints.CheckpointCorrupt, match="checksum|damaged"):
        reader.restore_params(params, step=2)
    load_policy(tmp_path)  # a reader skips it, naming it
    assert "checkpoint 2 in" in capsys.readouterr().err
    messages = []
    with ck.Checkpointer(tmp_path, max_to_keep=5) as loader:
        restored = loader.resume(params=params, train_state=train_state, config=config, log=messages.append)
    assert restored.step == 1 and "corrupt-2-" in messages[0]
    assert "checksum mismatch" in messages[0] or "damaged" in messages[0]


def test_checksums_are_the_same_from_the_host_and_from_shards_on_a_mesh():
    mesh = jax.make_mesh((8,), ("fsdp",))
    values = np.random.default_rng(0).standard_normal((16, 12)).astype(np.float32)
    sharded = jax.device_put(values, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp")))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    lanes, finite = checkpoints._device_digest_program(replicated)(sharded)
    assert checkpoints._digest(values) == (f"{int(lanes[0]):08x}{int(lanes[1]):08x}", bool(finite))
    changed = values.copy()
    changed.view(np.uint32)[3, 4] ^= 1  # one bit
    assert checkpoints._digest(changed)[0] != checkpoints._digest(values)[0]
    bf16 = jnp.asarray(values, jnp.bfloat16)
    assert checkpoints._digest(bf16)[0] != checkpoints._digest(values)[0] and checkpoints._digest(np.asarray(bf16))[0] == checkpoints._digest(bf16)[0]


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


_SIGTERM_AT_THE_FINAL_WAIT = """
import os, signal, sys
import jax
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train

close = ck.Checkpointer.close
def close_after_a_sigterm(self):
    os.kill(os.getpid(), signal.SIGTERM)  # "waiting for checkpoint N to be written ..."
    close(self)
ck.Checkpointer.close = close_after_a_sigterm
train(load_config(overrides=sys.argv[1:]), devices=jax.devices()[:1])
"""


@pytest.mark.slow
def test_sigterm_at_the_final_checkpoint_wait_lets_the_checkpoint_complete(tmp_path):
    """Issue 29 item 8 (the lost final eval row: test_finished_runs.py)."""
    from tests.train.test_resume import TINY_RUN

    overrides = [*[arg for arg in TINY_RUN if not arg.startswith("total_steps=")], "total_steps=1",
                 f"run_dir={tmp_path / 'run'}"]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    done = subprocess.run([sys.executable, "-c", _SIGTERM_AT_THE_FINAL_WAIT, *overrides], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]  # was -15: killed at once, the checkpoint a tmp directory
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
    with ck.Checkpointer(tmp_path / "run", read_only=True) as reader:
        assert reader.all_steps() == [1] and reader.fingerprint(1) is not None


def test_non_finite_parameters_stop_the_run_in_one_line_and_are_never_checkpointed(tmp_path, policy, monkeypatch,  # noqa: F811
                                                                                   capsys):
    from types import SimpleNamespace

    from entropy_rl.train import cli, step_checks

    config, params, train_state = _two_steps(tmp_path, policy)
    overflowed = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf) if x.ndim else x, params)
    with ck.Checkpointer(tmp_path, max_to_keep=5) as saver, pytest.raises(ck.NonFiniteParameters,
                                                                          match="the last good checkpoint is step 2"):
        saver.save(3, params=overflowed, train_state=train_state, data_state={}, config=config)
    with ck.Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == [1, 2]

    # the guard reads the parameters an update produced, not only the skipped-update count
    state = SimpleNamespace(params=overflowed, opt_state=SimpleNamespace(notfinite_count=0, total_notfinite=0))
    checkpointer = SimpleNamespace(latest_step=lambda: 2, directory=str(tmp_path / "checkpoints"))
    with pytest.raises(FloatingPointError, match="step 3 made the parameters non-finite .* last good checkpoint is "
                                                 "step 2"):
        step_checks.count_step(step_checks.Run(), {"entropy/mean": 1.0}, state, step=3, config=config,
                               checkpointer=checkpointer)

    def stopped(config):
        raise FloatingPointError("step 3 made the parameters non-finite")

    monkeypatch.setitem(sys.modules, "entropy_rl.train.loop", SimpleNamespace(train=stopped))
    capsys.readouterr()
    assert cli.main([f"run_dir={tmp_path / 'cli'}"]) == 1
    assert capsys.readouterr().err.strip() == "entropy-rl train: step 3 made the parameters non-finite"


def test_a_collapse_to_uniform_is_reported_once():
    from entropy_rl.train import step_checks

    run, lines, uniform = step_checks.Run(entropy_start=2.0), [], float(np.log(102))
    step_checks.warn_if_uniform(run, {"entropy/mean": 2.5}, 1, 102, lines.append)
    assert lines == []
    for step in (2, 3):
        step_checks.warn_if_uniform(run, {"entropy/mean": uniform - 1e-3}, step, 102, lines.append)
    assert len(lines) == 1 and "step 2: the policy has collapsed to uniform" in lines[0] and "4.625" in lines[0]
    started_uniform = step_checks.Run(entropy_start=uniform)  # a fresh random policy: not a collapse
    step_checks.warn_if_uniform(started_uniform, {"entropy/mean": uniform}, 1, 102, lines.append)
    assert len(lines) == 1


def test_a_failing_tensorboard_writer_thread_stops_the_run_with_one_line_not_a_hang(tmp_path, monkeypatch):
    import errno
    import threading

    from tensorboardX.event_file_writer import EventsWriter

    from entropy_rl.config import LoggingConfig
    from entropy_rl.train.metrics import LogWriteError, MetricsLogger

    logger = MetricsLogger(tmp_path, LoggingConfig(tensorboard=True, progress_bar=False), total_steps=100)

    def disk_full(self, serialized):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EventsWriter, "_write_serialized_event", disk_full)  # the writer thread's next write fails
    raised = []

    def log_steps():
        try:
            for step in range(1, 100):
                logger.log(step, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0})
                time.sleep(0.05)
        except LogWriteError as error:
            raised.append(str(error))

    steps = threading.Thread(target=log_steps, daemon=True)
    steps.start()
    steps.join(timeout=60)
    assert not steps.is_alive(), "logging blocked on the dead writer's queue"
    assert len(raised) == 1 and "cannot write " in raised[0] and str(tmp_path / "tensorboard") in raised[0]
    assert " at step " in raised[0] and "No space left on device [errno 28]" in raised[0]
    logger.close()  # no hang, no second error raised


def test_a_missing_step_is_named_with_the_steps_there_are_and_inf_is_refused_like_nan(tmp_path, policy):  # noqa: F811
    from entropy_rl.train.config import ConfigError

    _two_steps(tmp_path / "run", policy, _config(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 5 in .*checkpoints \(have: \[1, 2\]\)"):
        load_policy(tmp_path / "run", step=5)
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="optimizer.learning_rate: Input should be a finite number"):
            load_config(overrides=[f"optimizer.learning_rate={value}"])


def test_garbage_lines_in_metrics_and_samples_and_a_garbage_summary_are_set_aside_not_fatal(tmp_path):
    from entropy_rl.config import LoggingConfig
    from entropy_rl.train import summary
    from entropy_rl.train.metrics import MetricsLogger, read_metrics
    from entropy_rl.train.samples import SamplesWriter

    garbage = '{"step": 1}\n\x00\x00garbage\n{"step": 2, "eval/accuracy": 0.5}\n'
    for name in ("metrics.jsonl", "samples.jsonl"):
        (tmp_path / name).write_text(garbage)
    with pytest.warns(UserWarning, match=r"1 unreadable lines skipped .*metrics.jsonl:2"):
        assert read_metrics(tmp_path) == [{"step": 1}, {"step": 2, "eval/accuracy": 0.5}]
    with pytest.warns(UserWarning, match="copied to"):
        MetricsLogger(tmp_path, LoggingConfig(tensorboard=False, progress_bar=False), total_steps=2,
                      start_step=1).close()
        SamplesWriter(str(tmp_path), start_step=1, max_mb=1, enabled=True)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert jsonl.read_rows(tmp_path / name) == [{"step": 1}]
        assert (tmp_path / f"{name}.bad-lines").read_text() == "\x00\x00garbage\n"

    (tmp_path / "summary.json").write_text("{garbage")
    (tmp_path / "summary.txt").write_text("table\n")
    config = load_config(overrides=[f"run_dir={tmp_path}", "total_steps=2"])
    assert summary.finished_summary(config) is None  # the run writes it again


def test_lengths_beyond_the_models_positions_are_refused_naming_the_key_and_the_remedy(capsys):
    from entropy_rl.train import cli
    from entropy_rl.train.config import ConfigError
    from entropy_rl.train.limits import check_lengths

    assert cli.main(["rollout.max_new_tokens=100000"]) == 2  # before anything is built
    err = capsys.readouterr().err
    assert "rollout.max_new_tokens=100000 + the shortest prompt bucket (rollout.prompt_bucket=16) = 100016 " in err
    assert "max_position_embeddings=512: lower rollout.max_new_tokens to 496 or less" in err
    config = load_config(overrides=["rollout.max_new_tokens=100"])
    check_lengths(config, longest_prompt=("p1", 200))  # 512 positions: 100 + a bucket of 256 fit
    with pytest.raises(ConfigError, match=r"the longest prompt \('p7', 8000 tokens, padded to 8192\) = 8292 positions.*"
                                          r"set data.max_prompt_length=256 \(longer prompts are left out\)"):
        check_lengths(config, longest_prompt=("p7", 8000))


def test_an_unexpected_failure_is_one_line_with_the_traceback_in_the_run_directory(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from entropy_rl.train import cli

    def bad_data(config):
        raise ValueError("data.jsonl:3: no 'answer' key; set data.answer_key")

    monkeypatch.setitem(sys.modules, "entropy_rl.train.loop", SimpleNamespace(train=bad_data))
    assert cli.main([f"run_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err == (f"entropy-rl train: ValueError: data.jsonl:3: no 'answer' key; set data.answer_key (traceback in "
                   f"{tmp_path / 'error.log'}; --debug shows it)\n")
    assert "Traceback" in (tmp_path / "error.log").read_text()
    with pytest.raises(ValueError, match="no 'answer' key"):
        cli.main([f"run_dir={tmp_path}", "--debug"])


def test_a_run_that_clearly_cannot_fit_the_machine_is_refused_before_allocating(monkeypatch):
    from entropy_rl.train.config import ConfigError
    from entropy_rl.train.limits import check_memory, memory_estimate

    config = load_config(overrides=["data.batch_size=65536", "rollout.n=64", "rollout.max_new_tokens=496"])
    q = config.model.qwen_config(1)
    rows, positions = 65536 * 64, 16 + 496  # float32 keys and values of every layer
    assert memory_estimate(config)["KV cache of the rollout"] == rows * positions * q.num_hidden_layers * 2 * \
        q.num_key_value_heads * q.head_dim * 4
    with pytest.raises(ConfigError, match=r"needs at least .* KV cache of the rollout 4,096.0 GiB.*lower data.batch_"
                                          r"size.*ENTROPY_RL_NO_MEMORY_CHECK=1"):
        check_memory(config, jax.devices()[:1])
    check_memory(load_config(), jax.devices()[:1])  # the default run fits
    monkeypatch.setenv("ENTROPY_RL_NO_MEMORY_CHECK", "1")
    check_memory(config, jax.devices()[:1])
