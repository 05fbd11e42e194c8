"""Orbax checkpoints: bitwise round trip (params, optimizer state, counters, PRNG keys, JSON
state, config), keep-last-N, restore onto a mesh, and rebuilding the policy from a run.
Faults: damaged steps, config changes on resume, resume=false, a failed save."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from entropy_rl.checkpoints import CheckpointCorrupt
from entropy_rl.failures import _drop_late_write_callbacks, quiet_library_noise
from entropy_rl.model import save_hf
from entropy_rl.parallel import MeshConfig, make_mesh, state_shardings
from entropy_rl.policy import build_policy, load_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import TrainConfig, load_config
from entropy_rl.train.config import replace as replace_config

SMALL_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16"]


def _config(run_dir, *extra) -> TrainConfig:
    return load_config(overrides=[f"run_dir={run_dir}", *SMALL_MODEL, *extra])


@pytest.fixture(scope="module")
def policy():
    """One small built-in policy for the whole module (model building is the slow part)."""
    return build_policy(_config("unused").model, seed=0)


@jax.jit
def _adamw_step(params, offset):
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt_state = optimizer.init(params)
    grads = jax.tree.map(lambda x: jnp.sin(x * 3.0 + offset), params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _run_state(policy_and_tokenizer, seed: int):
    """(params, train_state) as a training loop holds them: after one AdamW update."""
    _, params = nnx.split(policy_and_tokenizer[0])
    params, opt_state = _adamw_step(params, jnp.float32(seed))
    train_state = {
        "opt_state": opt_state,
        "step": jnp.asarray(7 + seed, jnp.int32),
        "num_skipped": jnp.asarray(seed, jnp.int32),
        "rng": jax.random.key(100 + seed),
        "raw_rng": jax.random.PRNGKey(200 + seed),
    }
    return params, train_state


def _bits(tree):
    """Every leaf as numpy (PRNG keys as their key data), for bitwise comparison."""

    def leaf(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.leaves(jax.tree.map(leaf, tree))


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_bits(a), _bits(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_is_bitwise(tmp_path, async_save, policy):
    config = _config(tmp_path, "seed=3", "algorithm.name=sent")
    params, train_state = _run_state(policy, seed=0)
    data_state = {"epoch": 2, "position": 17, "order_seed": [1, 2, 3], "stage": None}
    with ck.Checkpointer(tmp_path, max_to_keep=2, async_save=async_save) as saver:
        assert saver.latest_step() is None
        saver.save(5, params=params, train_state=train_state, data_state=data_state, config=config)

    other_params, other_state = _run_state(policy, seed=1)  # targets with different values
    with pytest.raises(AssertionError):
        _assert_bitwise_equal(params, other_params)
    with ck.Checkpointer(tmp_path) as loader:
        restored = loader.restore(params=other_params, train_state=other_state)
    assert restored.step == 5
    _assert_bitwise_equal(restored.params, params)
    _assert_bitwise_equal(restored.train_state, train_state)
    assert jnp.issubdtype(restored.train_state["rng"].dtype, jax.dtypes.prng_key)
    assert restored.data_state == data_state
    assert restored.config == config
    # the restored key continues the same random stream
    np.testing.assert_array_equal(jax.random.uniform(restored.train_state["rng"], (4,)),
                                  jax.random.uniform(train_state["rng"], (4,)))


def test_restore_without_checkpoint_is_none(tmp_path, policy):
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path) as saver:
        assert saver.restore(params=params, train_state=train_state) is None


def test_keeps_the_last_n_and_restores_the_latest(tmp_path, policy):
    config = _config(tmp_path)
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path, max_to_keep=2) as saver:
        for step in (1, 2, 3, 4, 5):
            state = dict(train_state, step=jnp.asarray(step, jnp.int32))
            saver.save(step, params=params, train_state=state, data_state={"position": step}, config=config)
    with ck.Checkpointer(tmp_path, max_to_keep=2) as loader:
        assert loader.all_steps() == [4, 5] and loader.latest_step() == 5
        restored = loader.restore(params=params, train_state=train_state)
        assert int(restored.train_state["step"]) == 5 and restored.data_state == {"position": 5}
        older = loader.restore(params=params, train_state=train_state, step=4)
        assert int(older.train_state["step"]) == 4 and older.data_state == {"position": 4}


def test_restore_takes_the_shardings_of_the_target(tmp_path, policy):
    config = _config(tmp_path)
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path) as saver:  # saved from one device
        saver.save(1, params=params, train_state=train_state, data_state={}, config=config)
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    shardings = state_shardings(params, mesh)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
    with ck.Checkpointer(tmp_path) as loader:
        restored = loader.restore(params=target, train_state=train_state)
    _assert_bitwise_equal(restored.params, params)
    for array, sharding in zip(jax.tree.leaves(restored.params), jax.tree.leaves(shardings)):
        assert array.sharding == sharding
    assert any(len(a.sharding.device_set) == 8 and a.addressable_shards[0].data.size < a.size
               for a in jax.tree.leaves(restored.params))  # really distributed


def test_load_policy_rebuilds_the_model_from_the_run(tmp_path, policy):
    config = _config(tmp_path / "run")
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(config.run_dir) as saver:
        saver.save(3, params=params, train_state=train_state, data_state={}, config=config)
    model, tokenizer = policy
    graphdef, _ = nnx.split(model)
    forward = nnx.jit(lambda m, ids: m(ids))
    ids = jnp.asarray([tokenizer.encode("12+7=")], jnp.int32)
    expected = np.asarray(forward(nnx.merge(graphdef, params), ids))
    for path in (config.run_dir, f"{config.run_dir}/checkpoints", f"{config.run_dir}/checkpoints/3"):
        loaded, loaded_tokenizer = load_policy(path)
        assert loaded_tokenizer.vocab_size == tokenizer.vocab_size
        _assert_bitwise_equal(nnx.state(loaded), params)
    np.testing.assert_array_equal(np.asarray(forward(loaded, ids)), expected)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_policy(tmp_path / "nowhere")


def test_build_policy_from_an_hf_directory_and_with_a_mesh(tmp_path, policy):
    config = _config(tmp_path)
    model, tokenizer = policy
    assert model.config.vocab_size == tokenizer.vocab_size and model.config.qk_norm
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    save_hf(model, str(tmp_path / "hf"))
    hf_model = load_config(overrides=[f"model.hf_path={tmp_path / 'hf'}", "model.tokenizer=builtin",
                                      "model.remat=true", "model.attention_block_size=64",
                                      "model.remat_policy=dots_saveable", "model.attention_implementation=blockwise",
                                      "model.scan_layers=true"]).model
    mesh = make_mesh(MeshConfig(fsdp=8))
    loaded, _ = build_policy(hf_model, seed=1, mesh=mesh)
    # every non-architecture field of the model section reaches a checkpoint's config
    assert {k: getattr(loaded.config, k) for k in hf_model.runtime_options()} == hf_model.runtime_options()
    assert loaded.config.attention_implementation == "blockwise" and loaded.config.remat_policy == "dots_saveable"
    _assert_bitwise_equal(nnx.state(loaded), nnx.state(model))
    sharded, _ = build_policy(config.model, seed=0, mesh=mesh)  # same seed: same weights, distributed
    _assert_bitwise_equal(nnx.state(sharded), nnx.state(model))
    assert all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(nnx.state(sharded)))


def test_a_killed_save_is_ignored_and_cleaned_up(tmp_path, policy):
    config = _config(tmp_path)
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path) as saver:
        saver.save(1, params=params, train_state=train_state, data_state={"position": 1}, config=config)
    # what SIGKILL during an asynchronous save of step 2 leaves behind: an unfinished temporary directory
    torn = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (torn / "params").mkdir(parents=True)
    with ck.Checkpointer(tmp_path, read_only=True) as reader:  # a reader leaves it alone
        assert reader.latest_step() == 1
    assert torn.exists()
    with ck.Checkpointer(tmp_path) as writer:  # the resumed run: restores step 1, then saves step 2 again
        assert writer.all_steps() == [1]
        restored = writer.restore(params=params, train_state=train_state)
        assert restored.step == 1 and restored.data_state == {"position": 1}
        writer.save(2, params=params, train_state=train_state, data_state={"position": 2}, config=config)
    assert not torn.exists()
    with ck.Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == [1, 2]


def test_restore_into_another_architecture_names_the_config_differences(tmp_path, policy):
    config = _config(tmp_path)
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path) as saver:
        saver.save(1, params=params, train_state=train_state, data_state={}, config=config)
    wider = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[:-1] + (x.shape[-1] * 2,), x.dtype), params)
    other = load_config(overrides=[f"run_dir={tmp_path}", *SMALL_MODEL, "model.hidden_size=64"])
    with ck.Checkpointer(tmp_path) as loader, pytest.raises(ValueError) as info:
        loader.restore(params=wider, train_state=train_state, config=other)
    message = str(info.value)
    assert "checkpoint 1" in message and "model.hidden_size: 32 -> 64" in message and "resume=false" in message


# --------------------------------------------------------------------------- faults


def _two_steps(tmp_path, policy, config=None):
    """A run directory with checkpoints 1 and 2 (different train_state), and the targets."""
    config = config or _config(tmp_path)
    params, train_state = _run_state(policy, seed=0)
    with ck.Checkpointer(tmp_path, max_to_keep=5) as saver:
        for step in (1, 2):
            saver.save(step, params=params, train_state=dict(train_state, step=jnp.asarray(step, jnp.int32)),
                       data_state={"position": step}, config=config)
    return config, params, train_state


def _truncate_arrays(step_dir):
    for path in step_dir.glob("params/**/d/*"):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def _empty(step_dir):
    import shutil

    shutil.rmtree(step_dir)
    step_dir.mkdir()


DAMAGE = {
    "truncated arrays": _truncate_arrays,
    "no params metadata": lambda d: [p.unlink() for p in (d / "params").glob("*METADATA*")],
    "no config": lambda d: (d / "config" / "metadata").unlink(),
    "empty step directory": _empty,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_step_is_moved_aside_and_the_previous_one_resumed(tmp_path, policy, damage, caplog):
    config, params, train_state = _two_steps(tmp_path, policy)
    DAMAGE[damage](tmp_path / "checkpoints" / "2")
    caplog.set_level(logging.WARNING)
    messages = []
    with ck.Checkpointer(tmp_path, max_to_keep=5) as loader:
        restored = loader.resume(params=params, train_state=train_state, config=config, log=messages.append)
        assert restored.step == 1 and restored.data_state == {"position": 1}
        assert int(restored.train_state["step"]) == 1
        assert loader.all_steps() == [1]
        loader.save(2, params=params, train_state=train_state, data_state={"position": 2}, config=config)
    assert len(messages) == 1 and "checkpoint 2 in" in messages[0] and "is damaged" in messages[0]
    assert "config" not in messages[0].split("damaged")[0]  # reported as damage, not as a config mismatch
    assert "NoneType" not in messages[0] and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    aside = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("corrupt-2-")]
    assert len(aside) == 1 and aside[0] in messages[0]
    with ck.Checkpointer(tmp_path, read_only=True) as reader:  # the moved step is not taken for a step
        assert reader.all_steps() == [1, 2]


def test_readers_skip_a_damaged_latest_step_and_name_a_damaged_requested_one(tmp_path, policy, capsys):
    config = _config(tmp_path / "run")
    _two_steps(tmp_path / "run", policy, config)
    _truncate_arrays(tmp_path / "run" / "checkpoints" / "2")
    loaded, _ = load_policy(config.run_dir)
    _assert_bitwise_equal(nnx.state(loaded), _run_state(policy, seed=0)[0])
    assert "checkpoint 2 in" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]  # nothing moved
    with pytest.raises(CheckpointCorrupt, match=r"checkpoint 2 in .* is damaged: .*Other steps on disk: \[1\]"):
        load_policy(config.run_dir, step=2)


def test_an_array_mismatch_is_not_reported_as_damage(tmp_path, policy):
    config, params, train_state = _two_steps(tmp_path, policy)
    wider = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[:-1] + (x.shape[-1] * 2,), x.dtype), params)
    other = replace_config(config, model={"hidden_size": 64})
    with ck.Checkpointer(tmp_path) as loader, pytest.raises(ValueError) as info:
        loader.resume(params=wider, train_state=train_state, config=replace_config(other, resume_allow_changes=True))
    assert "model.hidden_size: 32 -> 64" in str(info.value) and "saved (" in str(info.value)
    assert not isinstance(info.value, CheckpointCorrupt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_resume_lists_harmless_config_changes_and_refuses_others(tmp_path, policy):
    config, params, train_state = _two_steps(tmp_path, policy)
    harmless = replace_config(config, total_steps=500, logging={"tensorboard": False}, eval={"every_steps": 7},
                              checkpoint={"every_steps": 3})
    messages = []
    with ck.Checkpointer(tmp_path) as loader:
        assert loader.resume(params=params, train_state=train_state, config=harmless, log=messages.append).step == 2
    assert len(messages) == 1 and all(key in messages[0] for key in
                                      (f"total_steps: {config.total_steps} -> 500", "logging.tensorboard", "eval.every_steps", "checkpoint.every_steps"))
    changed = replace_config(harmless, optimizer={"learning_rate": 0.05}, algorithm={"name": "grpo"})
    with ck.Checkpointer(tmp_path) as loader, pytest.raises(ck.ResumeConfigError) as info:
        loader.resume(params=params, train_state=train_state, config=changed, log=messages.append)
    message = str(info.value)
    assert "checkpoint 2" in message and "optimizer.learning_rate" in message and "algorithm.name" in message
    assert "total_steps" not in message and "resume_allow_changes=true" in message
    allowed = replace_config(changed, resume_allow_changes=True)
    with ck.Checkpointer(tmp_path) as loader:
        assert loader.resume(params=params, train_state=train_state, config=allowed, log=messages.append).step == 2
    assert "optimizer.learning_rate" in messages[-1] and "total_steps" in messages[-1]


def test_resume_false_moves_the_old_run_aside(tmp_path, policy):
    _two_steps(tmp_path, policy)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    messages = []
    moved = ck.set_aside_previous_run(tmp_path, log=messages.append)
    assert moved in messages[0] and "resume=false" in messages[0]
    assert sorted(p.name for p in (tmp_path / moved / "checkpoints").iterdir()) == ["1", "2"]
    assert (tmp_path / moved / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert ck.set_aside_previous_run(tmp_path, log=messages.append) is None and len(messages) == 1


@pytest.mark.parametrize("async_save", [True, False])
def test_a_failed_save_is_one_error_naming_step_path_and_cause(tmp_path, policy, async_save, caplog):
    """Disk full, for real: a file-size limit makes the array writes fail (EFBIG) as ENOSPC would."""
    import resource
    import signal

    quiet_library_noise()  # as `entropy-rl` does at start: Orbax's own tracebacks of the failure dropped

    config, params, train_state = _two_steps(tmp_path, policy)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    saver = ck.Checkpointer(tmp_path, max_to_keep=2, async_save=async_save)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
        with pytest.raises(ck.CheckpointSaveError) as info:
            saver.save(3, params=params, train_state=train_state, data_state={}, config=config)
            saver.check()
            saver.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
        saver.close()  # no second error
    message = str(info.value)
    assert message.startswith(f"could not save checkpoint 3 to {tmp_path}/checkpoints/3: ")
    assert "File too large [errno 27]" in message and "the previous checkpoint, step 2, is intact" in message
    assert len(message.splitlines()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # Orbax's tracebacks are not shown
    with ck.Checkpointer(tmp_path, read_only=True) as reader:
        assert reader.all_steps() == [1, 2]  # max_to_keep=2 removed nothing for the failed step
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*")
             if p.is_file() and p.relative_to(tmp_path).parts[1] in ("1", "2")}
    assert after == before


def test_late_write_callbacks_of_a_failed_save_are_not_printed():
    """TensorStore writes finishing after a failed save's event loop closed report one
    'Event loop is closed' traceback each; only those are dropped."""
    import asyncio
    import types

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as error:
        late = error
    other = RuntimeError("Event loop is closed")  # same text, not from a late callback
    seen = []
    hook = _drop_late_write_callbacks(seen.append)
    for error in (late, other, ValueError("x")):
        hook(types.SimpleNamespace(exc_value=error))
    assert [unraisable.exc_value for unraisable in seen] == [other, seen[1].exc_value]
    assert isinstance(seen[1].exc_value, ValueError)
