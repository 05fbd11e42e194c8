"""Orbax checkpoints of a run, automatic resume, and building / loading the policy.

A checkpoint lives in RUN_DIR/checkpoints/<step>/ and holds five items:

- `params`       the policy's state, `nnx.split(policy)[1]` (any pytree of arrays works);
- `train_state`  every other array the run needs to continue exactly: optimizer state,
                 step counters, PRNG keys (typed `jax.random.key` or raw uint32 keys);
- `data_state`   JSON: the prompt iterator's / curriculum's `state_dict()` and host-side
                 counters;
- `config`       JSON: the run's TrainConfig, so that `load_policy` can rebuild the model;
- `checksums`    JSON: a 64-bit checksum of every array above (`array_digests`), verified by
                 every restore; their `fingerprint` identifies the weights (eval keys results by it).

Arrays are restored with the shardings of the target (abstract) state, so a run resumes on
the mesh it is started with. Saving is asynchronous: the arrays are copied off the devices,
then written in the background while training goes on; `wait()` blocks until the files are
final. Orbax writes each step to a temporary directory and renames it when complete, so a
run killed at any moment resumes from its last complete checkpoint.

Faults (each reported as a `CheckpointError` naming the step, the directory and the cause):

- a damaged step (a truncated or missing file, an empty step directory, an array whose
  checksum differs from the one saved) is `CheckpointCorrupt`,
  told apart from a checkpoint of another model (a `ValueError` listing the config changes)
  by reading the saved arrays' metadata. `Checkpointer.resume` moves a damaged step aside to
  `checkpoints/corrupt-<step>-<time>` and continues from the newest intact step; readers
  (`load_policy`) skip it without moving anything;
- resuming under a changed config: the harmless changes (`HARMLESS_CHANGES`: total_steps,
  logging, eval and checkpoint cadence, the mesh, resume flags) are listed, any other change
  is refused (`ResumeConfigError`, naming the keys) unless `resume_allow_changes=true`;
- a save that fails (disk full, permissions), in the background or not, raises
  `CheckpointSaveError` at the next `check()` / `save()` / `wait()`; the previous checkpoints
  stay as they were;
- `resume=false` on a used run directory, or a resume that finds every checkpoint damaged,
  moves all of the old run's files aside (`set_aside_previous_run`), it never deletes them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from entropy_rl.train.config import ModelConfig, TrainConfig, config_diff, config_from_dict, config_to_dict
from entropy_rl.train.rundir import LOCK_FILE
from entropy_rl.train.signals import deferred_interrupts

CHECKPOINT_SUBDIR = "checkpoints"
CHECKSUMS_ITEM = "checksums"  # the fifth item of a checkpoint: {"params/<path>": checksum, "train_state/<path>": ...}
# Config keys (a trailing "." covers a whole section) that may change when a run resumes: they
# change neither the arrays, nor the data, nor what the run computes.
HARMLESS_CHANGES = ("run_dir", "total_steps", "resume", "resume_allow_changes", "max_consecutive_nonfinite",
                    "stall_timeout_s", "logging.", "eval.every_steps", "checkpoint.", "mesh.")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, written or resumed; the message says which and why."""


class CheckpointCorrupt(CheckpointError, ValueError):
    """Checkpoint `step` in `directory` is damaged (`reason`). A ValueError too, so that the
    commands that report bad input in one line (eval, export) report it the same way."""

    def __init__(self, step: int, directory: str, reason: str):
        super().__init__(f"checkpoint {step} in {directory} is damaged: {reason}")
        self.step, self.directory, self.reason = step, directory, reason


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed."""


class ResumeConfigError(CheckpointError):
    """The run directory's checkpoint was saved under a config that differs in a way that matters."""


def _cause(error: BaseException) -> str:
    """The innermost OSError of an exception chain (disk full, permissions; TensorStore's
    `os_error_code`) as "<strerror> [errno N] (...)", else the error's first line: `Type: message`."""
    seen, innermost = set(), error
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            innermost = error
        error = error.__cause__ or error.__context__
    text = (str(innermost).strip().splitlines() or [""])[0]
    os_error = re.search(r"os_error_code='?(\d+)", text)  # TensorStore's form of an OSError
    code = int(os_error.group(1)) if os_error else getattr(innermost, "errno", None)
    if code:
        return f"{os.strerror(code)} [errno {code}] ({type(innermost).__name__}: {text[:160]} ...)"
    return f"{type(innermost).__name__}: {text[:300]}"


def split_changes(saved: TrainConfig, current: TrainConfig) -> tuple[list[str], list[str]]:
    """(harmless, refused) `"key: old -> new"` differences between a checkpoint's config and
    the current one (`HARMLESS_CHANGES`)."""
    harmless, refused = [], []
    for change in config_diff(saved, current):
        key = change.split(":", 1)[0]
        ok = any(key == name or (name.endswith(".") and key.startswith(name)) for name in HARMLESS_CHANGES)
        (harmless if ok else refused).append(change)
    return harmless, refused


def _on_first_process(action: Callable[[], None], name: str) -> None:
    """`action()` (a file move) on process 0 only; every process goes on once it is done."""
    if jax.process_index() == 0:
        action()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


PREVIOUS_RUN_PREFIX = "previous-"


def set_aside_previous_run(run_dir: str | os.PathLike, log: Callable[[str], None] = _say,
                           reason: str = "resume=false") -> str | None:
    """Move every file of a previous run in RUN_DIR (checkpoints, metrics, samples, summary,
    config, TensorBoard events, ...) into RUN_DIR/previous-<time>/ (nothing is deleted) and
    say so, naming `reason`; returns that directory, None when there was nothing to move.
    Earlier previous-* directories and the run directory's lock stay where they are."""
    run_dir = os.fspath(run_dir)
    names = sorted(name for name in (os.listdir(run_dir) if os.path.isdir(run_dir) else [])
                   if not name.startswith(PREVIOUS_RUN_PREFIX) and name != LOCK_FILE)
    if not names:
        return None
    target = os.path.join(run_dir, time.strftime(f"{PREVIOUS_RUN_PREFIX}%Y%m%dT%H%M%S"))

    def move() -> None:
        os.makedirs(target)
        for name in names:
            os.rename(os.path.join(run_dir, name), os.path.join(target, name))

    _on_first_process(move, "set_aside_previous_run")
    log(f"{reason}: the previous run in {run_dir} ({', '.join(names)}) was moved to {target}")
    return target


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...] | None]:
    """{path: shape} of a pytree's leaves (arrays, ShapeDtypeStructs or Orbax metadata), the
    path as strings; None for typed PRNG keys, which are saved as their key data."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        dtype = getattr(leaf, "dtype", None)
        typed_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
        shapes[key] = None if typed_key or not hasattr(leaf, "shape") else tuple(leaf.shape)
    return shapes


def _tree_differences(item: str, saved: Any, target: Any) -> list[str]:
    """How the arrays of a checkpoint item differ from the restore target (empty: they fit)."""
    saved, target = _leaf_shapes(saved), _leaf_shapes(target)
    name = lambda key: f"{item}/{'/'.join(key)}"  # noqa: E731
    differences = [f"{name(key)} missing in the checkpoint" for key in target if key not in saved]
    differences += [f"{name(key)} only in the checkpoint" for key in saved if key not in target]
    differences += [f"{name(key)}: saved {saved[key]}, wanted {target[key]}" for key in target
                    if key in saved and None not in (saved[key], target[key]) and saved[key] != target[key]]
    return differences


class _OrbaxErrorsReportedHere(logging.Filter):
    """Drops the error records of Orbax's failures: a failed save logs its traceback several
    times from its background threads (about 200 lines per array written) before `wait`
    re-raises it, and asyncio reports the sibling tasks' errors when they are collected;
    every Orbax call of this module turns that error into one CheckpointError message."""

    @staticmethod
    def _from_orbax(filename: str) -> bool:
        return f"{os.sep}orbax{os.sep}" in filename

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if self._from_orbax(record.pathname):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if record.name == "asyncio" and "os_error_code" in str(error or record.getMessage()):
            return False  # a TensorStore write's I/O error (a never-retrieved future of Orbax's save)
        trace = error.__traceback__ if error is not None else None
        while trace is not None:
            if self._from_orbax(trace.tb_frame.f_code.co_filename):
                return False
            trace = trace.tb_next
        return True


for _name in ("absl", "asyncio"):
    if not any(isinstance(f, _OrbaxErrorsReportedHere) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_OrbaxErrorsReportedHere())


def _is_late_write_callback(error: BaseException | None) -> bool:
    """The RuntimeError a TensorStore write reports when it completes after the event loop of
    its (failed, already reported) Orbax save has closed."""
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    return "call_soon_threadsafe" in frames


def _drop_late_write_callbacks(previous_hook: Callable) -> Callable:
    """A `sys.unraisablehook` that drops `_is_late_write_callback` errors (one 5-line traceback
    per array of a failed save) and passes everything else to `previous_hook`."""

    def hook(unraisable) -> None:
        if not _is_late_write_callback(unraisable.exc_value):
            previous_hook(unraisable)

    hook.drops_late_write_callbacks = True
    return hook


if not getattr(sys.unraisablehook, "drops_late_write_callbacks", False):
    sys.unraisablehook = _drop_late_write_callbacks(sys.unraisablehook)


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns: arrays placed like the targets, JSON as saved."""

    step: int
    params: Any
    train_state: Any
    data_state: dict
    config: TrainConfig


def _abstract(tree: Any) -> Any:
    """Shape/dtype/sharding of every array leaf (restore targets); other leaves unchanged."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, tree)


# --------------------------------------------------------------------------- integrity

_CHECKSUM_SEEDS = (0x9E3779B9, 0x7F4A7C15)  # two 32-bit lanes: a 64-bit checksum per array


def _fmix32(h, xp=jnp):
    """MurmurHash3's 32-bit finaliser on uint32 values (each input bit flips each output bit
    with p ~ 1/2); xp: numpy or jax.numpy."""
    h = h ^ (h >> xp.uint32(16))
    h = h * xp.uint32(0x85EBCA6B)
    h = h ^ (h >> xp.uint32(13))
    h = h * xp.uint32(0xC2B2AE35)
    return h ^ (h >> xp.uint32(16))


def _checksum(words, xp=jnp) -> list:
    """checksum[k] = sum_i fmix32(w_i XOR (i * s_k + s_k)) mod 2^32 over an array's bits as
    uint32 words w in row-major order (`_CHECKSUM_SEEDS`): defined by the global value, so
    a host copy (numpy) and any sharding over any number of processes (jax) give the same."""
    index = xp.arange(words.size, dtype=xp.uint32)
    return [xp.sum(_fmix32(words ^ (index * xp.uint32(s) + xp.uint32(s)), xp), dtype=xp.uint32)
            for s in _CHECKSUM_SEEDS]


def _host_words(x: np.ndarray) -> np.ndarray:
    """An array's bits as a flat uint32 vector (narrower items widened, 8-byte items split)."""
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype.itemsize == 8:
        return x.view(np.uint32)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(np.uint32, copy=False)


def _device_words(x: jax.Array) -> jax.Array:
    """`_host_words` on the devices."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


def _device_digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
    return jnp.stack(_checksum(_device_words(x))), finite


@functools.lru_cache(maxsize=None)
def _device_digest_program(out_sharding: jax.sharding.Sharding | None) -> Callable:
    """`_device_digest` compiled once per array shape, dtype and sharding, replicated result."""
    return jax.jit(_device_digest, out_shardings=out_sharding)


_HOST_DIGEST_MAX_SIZE = 2**18  # elements: smaller arrays are hashed on the host (no program to compile)


def _digest(x: Any) -> tuple[str, bool]:
    """(checksum as 16 hex digits, all values finite) of one array: small ones from a host copy,
    large ones by one fused program where their shards are (every process must call)."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if not isinstance(x, jax.Array) or (x.is_fully_addressable and x.size <= _HOST_DIGEST_MAX_SIZE):
        host = np.asarray(x)
        lanes = _checksum(_host_words(host), np)
        finite = not np.issubdtype(host.dtype, np.inexact) or bool(np.isfinite(host).all())
    else:
        mesh = getattr(x.sharding, "mesh", None)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None else None
        lanes, finite = (np.asarray(y.addressable_data(0)) for y in _device_digest_program(replicated)(x))
        finite = bool(finite)
    return f"{int(lanes[0]):08x}{int(lanes[1]):08x}", finite


def _leaf_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def array_digests(items: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """({"<item>/<leaf path>": `_digest` checksum}, names of the floating arrays holding a NaN
    or an infinity) of every array of `items` ({item name: pytree}). Every process of a
    multi-process job must call it; each gets the same result."""
    checksums, nonfinite = {}, []
    for item, tree in items.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            name = f"{item}/{_leaf_name(path)}"
            checksums[name], finite = _digest(leaf)
            if not finite:
                nonfinite.append(name)
    return checksums, nonfinite


def fingerprint(checksums: dict[str, str]) -> str:
    """The content identity of a checkpoint's weights: BLAKE2b (16 hex digits) of its
    parameters' checksums; equal for equal parameters, whatever the step or path."""
    params = {name: value for name, value in checksums.items() if name.startswith("params/")}
    return hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=8).hexdigest()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def all_finite(tree: Any) -> bool:
    """Whether every floating array of `tree` is free of NaN and infinities (one program on
    the devices that hold them; every process of a job must call it)."""
    return bool(np.asarray(_all_finite(tree).addressable_data(0)))


class NonFiniteParameters(CheckpointError):
    """A checkpoint was not written because parameters hold NaN or infinite values."""


class Checkpointer:
    """RUN_DIR/checkpoints through an `orbax.checkpoint.CheckpointManager`.

    Usage in a training loop:

        ckpt = Checkpointer(run_dir, max_to_keep=2, async_save=True)
        restored = ckpt.restore(params=params, train_state=train_state, config=config)  # None: fresh run
        ...
        ckpt.save(step, params=..., train_state=..., data_state=iterator.state_dict(), config=config)
        ...
        ckpt.close()   # waits for the last asynchronous save
    """

    def __init__(self, run_dir: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        """read_only: for readers (eval, export) of a run that may still be training: they
        neither create the directory nor remove a writer's unfinished temporary checkpoint."""
        directory = os.path.join(os.fspath(run_dir), CHECKPOINT_SUBDIR)
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # what a killed run left half-written
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.read_only = read_only
        self._async = async_save
        self._pending: int | None = None  # the step being written in the background
        self._failed = False  # a save failed (and was reported): nothing more to wait for

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Checkpointer":
        """The checkpointer of `config.run_dir` with the config's keep / async settings."""
        return cls(config.run_dir, max_to_keep=config.checkpoint.max_to_keep,
                   async_save=config.checkpoint.async_save)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, *, params: Any, train_state: Any, data_state: dict, config: TrainConfig) -> None:
        """Start writing checkpoint `step` (asynchronous unless async_save=False); keeps the last N.

        A checksum of every array is saved with it (`array_digests`, verified by every restore);
        NonFiniteParameters, and nothing written, when a parameter holds a NaN or an infinity.

        Waits for the previous save first. A failure (now or, for an asynchronous save, at the
        next `check` / `save` / `wait`) raises CheckpointSaveError; Ctrl-C is held until the
        arrays are copied off the devices, so an interrupt never abandons a started save."""
        self.wait()
        checksums, nonfinite = array_digests({"params": params, "train_state": train_state})
        nonfinite = [name for name in nonfinite if name.startswith("params/")]
        if nonfinite:
            good = self.latest_step()
            raise NonFiniteParameters(
                f"not saving checkpoint {step}: {len(nonfinite)} parameter arrays hold NaN or infinite values "
                f"({', '.join(nonfinite[:3])}{', ...' if len(nonfinite) > 3 else ''}); the last good checkpoint is "
                + (f"step {good} in {self.directory}" if good is not None else "none"))
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(train_state),
            data_state=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config_to_dict(config)),
            **{CHECKSUMS_ITEM: ocp.args.JsonSave(checksums)},
        )
        self._pending = step
        try:
            with deferred_interrupts():
                self._manager.save(step, args=args, force=True)
        except Exception as error:  # noqa: BLE001 - any failure to write is reported the same way
            self._raise_save_error(error)
        if not self._async:  # decided alike on every process: a wait is a barrier across them
            self.wait()

    def _raise_save_error(self, error: BaseException) -> None:
        step, self._pending, self._failed = self._pending, None, True
        with contextlib.suppress(Exception):
            self._manager.reload()  # the steps really on disk
        previous = self.latest_step()
        kept = f"the previous checkpoint, step {previous}, is intact" if previous is not None else "no earlier checkpoint"
        raise CheckpointSaveError(f"could not save checkpoint {step} to {os.path.join(self.directory, str(step))}: "
                                  f"{_cause(error)}. Training stopped; {kept}.") from None

    def check(self) -> None:
        """Raise CheckpointSaveError if a background save has failed (cheap: call every step).

        It never waits: on several processes each sees its part of a save finish at its own time,
        and a wait (a barrier across the processes) entered by some of them only would deadlock."""
        if self._pending is None or self._failed:
            return
        try:
            self._manager.check_for_errors()
        except Exception as error:  # noqa: BLE001 - any failure to write is reported the same way
            self._raise_save_error(error)

    def restore(self, *, params: Any, train_state: Any, step: int | None = None,
                config: TrainConfig | None = None) -> Restored | None:
        """Checkpoint `step` (default: the latest), arrays shaped, typed and sharded like the
        targets `params` / `train_state` (arrays or jax.ShapeDtypeStruct); None if there is none.

        When the arrays do not fit the targets, the ValueError lists how the checkpoint's config
        differs from `config` (the current run's)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params)),
            train_state=ocp.args.StandardRestore(_abstract(train_state)),
            data_state=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        restored = self._restore(step, args, {"params": params, "train_state": train_state}, config)
        return Restored(step, restored.params, restored.train_state, restored.data_state,
                        config_from_dict(restored.config, check_paths=False))

    def _restore(self, step: int, args: ocp.args.Composite, targets: dict[str, Any], config: TrainConfig | None):
        """`manager.restore`, its failure classified: CheckpointCorrupt for a damaged step,
        ValueError naming the config differences for arrays that do not fit the targets."""
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as error:  # noqa: BLE001 - classified below from the saved metadata
            differences = self._array_differences(step, targets)
            if not differences:  # unreadable metadata, or arrays that fit: the files are what is wrong
                raise CheckpointCorrupt(step, self.directory, _cause(error)) from None
            raise ValueError(self._mismatch_message(step, differences, config)) from None
        self._verify(step, {item: getattr(restored, item) for item in targets})
        return restored

    def checksums(self, step: int) -> dict[str, str] | None:
        """The array checksums saved with checkpoint `step`; None for a checkpoint saved
        without them (by an earlier version); CheckpointCorrupt when they cannot be read."""
        if not (epath.Path(self.directory) / str(step) / CHECKSUMS_ITEM).exists():
            return None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**{CHECKSUMS_ITEM: ocp.args.JsonRestore()}))
        except Exception as error:  # noqa: BLE001 - an unreadable JSON file
            raise CheckpointCorrupt(step, self.directory, f"{CHECKSUMS_ITEM}: {_cause(error)}") from None
        return restored[CHECKSUMS_ITEM]

    def fingerprint(self, step: int) -> str | None:
        """`fingerprint` of checkpoint `step`'s parameters (None: saved without checksums)."""
        checksums = self.checksums(step)
        return None if checksums is None else fingerprint(checksums)

    def _verify(self, step: int, restored: dict[str, Any]) -> None:
        """CheckpointCorrupt naming the arrays whose checksum differs from the one saved."""
        saved = self.checksums(step)
        if saved is None:
            return
        read, _ = array_digests(restored)
        wrong = [name for name, value in read.items() if saved.get(name, value) != value]
        if wrong:
            raise CheckpointCorrupt(step, self.directory, f"checksum mismatch in {len(wrong)} arrays "
                                    f"({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})")

    def _array_differences(self, step: int, targets: dict[str, Any]) -> list[str] | None:
        """How the arrays saved at `step` differ from `targets` ({item: target tree}) by their
        metadata (shapes and tree paths); None when that metadata cannot be read (damage)."""
        differences = []
        for item, target in targets.items():
            checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
            try:
                saved = checkpointer.metadata(os.path.join(self.directory, str(step), item)).item_metadata.tree
            except Exception:  # noqa: BLE001 - missing or unreadable metadata
                return None
            finally:
                checkpointer.close()
            differences += _tree_differences(item, saved, target)
        return differences

    def _mismatch_message(self, step: int, array_differences: list[str], config: TrainConfig | None) -> str:
        saved = self.saved_config(step)
        differences = config_diff(saved, config) if config is not None else ["(the current config was not given)"]
        return (f"checkpoint {step} in {self.directory} does not fit this run ("
                + "; ".join(array_differences[:5]) + ").\nIt was saved with a different config:\n  "
                + "\n  ".join(differences or ["(no difference: the model code changed since)"])
                + "\nUse another run_dir, or resume=false to start over in this one (the old run is moved aside).")

    def resume(self, *, params: Any, train_state: Any, config: TrainConfig,
               log: Callable[[str], None] = _say) -> Restored | None:
        """What a training run continues from: its newest intact checkpoint, None if there is none.

        A damaged step is named, moved aside to `checkpoints/corrupt-<step>-<time>` and the
        next older one tried. Config changes since the checkpoint: the `HARMLESS_CHANGES` are
        logged, any other raises ResumeConfigError naming them, unless
        `config.resume_allow_changes` (then they are logged too). A checkpoint past
        `config.total_steps` is refused (ResumeConfigError naming its step). When every
        checkpoint is damaged, the run says that it starts over and the old run's files are
        moved aside (`set_aside_previous_run`), not rewritten."""
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                harmless, refused = split_changes(self.saved_config(step), config)
                if refused and not config.resume_allow_changes:
                    raise ResumeConfigError(
                        f"checkpoint {step} in {self.directory} was saved under another config; resuming would "
                        "change:\n  " + "\n  ".join(refused) + "\nRevert these, or set resume_allow_changes=true to "
                        "resume with them, or resume=false to start over (the old run is moved aside), or use "
                        "another run_dir.")
                if step > config.total_steps:
                    raise ResumeConfigError(
                        f"checkpoint {step} in {self.directory} is past total_steps={config.total_steps}: set "
                        f"total_steps={step} or more to resume it, or resume=false to start over (the old run is "
                        "moved aside), or use another run_dir.")
                restored = self.restore(params=params, train_state=train_state, step=step, config=config)
            except CheckpointCorrupt as corrupt:
                self._set_aside(corrupt, log)
                damaged.append(step)
                continue
            if harmless or refused:
                log(f"resuming from checkpoint {step} with config changes:\n  " + "\n  ".join(harmless + refused))
            return restored
        if damaged:
            set_aside_previous_run(os.path.dirname(self.directory), log, reason=f"no intact checkpoint left (steps "
                                   f"{damaged} are damaged): starting over from step 0")
            _on_first_process(lambda: os.makedirs(self.directory, exist_ok=True), "recreate_checkpoints")
            self._manager.reload()
        return None

    def _set_aside(self, corrupt: CheckpointCorrupt, log: Callable[[str], None]) -> None:
        """Move a damaged step out of the way (readers only skip it)."""
        if self.read_only:
            log(f"{corrupt}; skipping it")
            return
        target = os.path.join(self.directory, time.strftime(f"corrupt-{corrupt.step}-%Y%m%dT%H%M%S"))
        _on_first_process(lambda: os.rename(os.path.join(self.directory, str(corrupt.step)), target),
                          f"set_aside_{corrupt.step}")
        self._manager.reload()
        log(f"{corrupt}\nmoved it to {target}; trying the previous checkpoint")

    def restore_params(self, params: Any, step: int | None = None) -> tuple[int, Any]:
        """Only the parameters of checkpoint `step` (default: latest), like the target `params`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params)))
        return step, self._restore(step, args, {"params": params}, None).params

    def saved_config(self, step: int | None = None) -> TrainConfig:
        """The TrainConfig stored with checkpoint `step` (default: latest); FileNotFoundError
        naming the steps there are when there is no such step, CheckpointCorrupt when it
        cannot be read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint {step} in {self.directory} (have: {self.all_steps()})")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 - a missing or unreadable JSON file
            raise CheckpointCorrupt(step, self.directory, f"config: {_cause(error)}") from None
        return config_from_dict(restored.config, check_paths=False)

    def wait(self) -> None:
        """Block until every asynchronous save has been written; CheckpointSaveError if one failed."""
        if self._failed:
            return
        try:
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - any failure to write is reported the same way
            self._raise_save_error(error)
        self._pending = None

    def close(self) -> None:
        """Wait for pending saves (saying so: an interrupted run still completes its last
        checkpoint) and release the manager's resources."""
        try:
            if self._pending is not None and self._manager.is_saving_in_progress():
                _say(f"waiting for checkpoint {self._pending} to be written to {self.directory} ...")
            self.wait()
        finally:
            with contextlib.suppress(Exception) if self._failed else contextlib.nullcontext():
                self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- the policy


def qwen_config(model: ModelConfig, vocab_size: int):
    """The `QwenConfig` of the policy (`ModelConfig.qwen_config`; `vocab_size`: the tokenizer's)."""
    return model.qwen_config(vocab_size)


def load_policy_tokenizer(model: ModelConfig):
    """The tokenizer of the policy: `model.tokenizer` ("builtin" or a directory), else
    `hf_path`'s own, else the built-in one."""
    from entropy_rl.data.tokenizer import load_tokenizer

    return load_tokenizer(model.tokenizer or model.hf_path or "builtin")


def build_policy(model: ModelConfig, *, seed: int, mesh: jax.sharding.Mesh | None = None, abstract: bool = False):
    """(policy, tokenizer) at the start of a run: the HF weights of `model.hf_path`, else a
    fresh built-in Qwen3 initialised from `seed`; sharded over `mesh` when given.

    abstract=True builds only the shapes (`nnx.eval_shape`), a restore target: no weights are
    read or initialised.
    """
    from flax import nnx

    from entropy_rl.model import Qwen, load_hf
    from entropy_rl.parallel import shard_model

    tokenizer = load_policy_tokenizer(model)
    config = qwen_config(model, tokenizer.vocab_size)
    if tokenizer.vocab_size > config.vocab_size:  # checked before any weight is read or a prompt sampled
        raise ValueError(f"the tokenizer ({model.tokenizer or model.hf_path or 'builtin'}) has {tokenizer.vocab_size} "
                         f"token ids but the model ({model.hf_path or 'built-in'}) has a vocabulary of "
                         f"{config.vocab_size}: ids >= {config.vocab_size} have no embedding; use the model's own "
                         "tokenizer (model.tokenizer) or model.vocab_size >= the tokenizer's")
    if model.hf_path is not None and not abstract:
        policy = load_hf(model.hf_path, mesh=mesh, **model.runtime_options())
        return policy, tokenizer
    create = lambda: Qwen(config, rngs=nnx.Rngs(seed))  # noqa: E731
    if abstract:
        return nnx.eval_shape(create), tokenizer
    policy = create()
    return (policy if mesh is None else shard_model(policy, mesh)), tokenizer


def locate_checkpoint(path: str | os.PathLike) -> tuple[str, int | None]:
    """(run dir, step or None) for a run dir, its checkpoints dir, or one step's dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
        return path, None
    if os.path.basename(path) == CHECKPOINT_SUBDIR:
        return os.path.dirname(path), None
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINT_SUBDIR and os.path.basename(path).isdigit():
        return os.path.dirname(parent), int(os.path.basename(path))
    raise FileNotFoundError(f"{path}: not a run directory (no {CHECKPOINT_SUBDIR}/ inside) nor a checkpoint")


def load_policy(path: str | os.PathLike, *, step: int | None = None, mesh: jax.sharding.Mesh | None = None):
    """(policy, tokenizer) from a run's checkpoint, for evaluation, ranking and export.

    `path`: a run directory, its `checkpoints/` directory, or `checkpoints/<step>`; `step`
    (default: the one in `path`, else the latest). The model is rebuilt from the config saved
    with the checkpoint, its parameters restored sharded over `mesh`, or with no mesh whole on
    this process's first local device. Either way the checkpoint may come from any topology
    (another mesh, device count or number of processes): Orbax reads each target shard from
    the saved parts. Without a step, a damaged latest checkpoint is named and the newest intact
    one loaded.
    """
    run_dir, path_step = locate_checkpoint(path)
    step = path_step if step is None else step
    checkpointer = Checkpointer(run_dir, async_save=False, read_only=True)
    try:
        candidates = [step] if step is not None else list(reversed(checkpointer.all_steps())) or [None]
        for candidate in candidates:  # a damaged latest step is skipped; a requested one is not
            try:
                return _load_step(checkpointer, candidate, mesh)
            except CheckpointCorrupt as corrupt:
                if candidate == candidates[-1]:
                    others = [s for s in checkpointer.all_steps() if s != corrupt.step]
                    raise CheckpointCorrupt(corrupt.step, corrupt.directory, f"{corrupt.reason}. Other steps on "
                                            f"disk: {others or 'none'}") from None
                _say(f"{corrupt}; loading the previous checkpoint")
    finally:
        checkpointer.close()


def _load_step(checkpointer: Checkpointer, step: int | None, mesh: jax.sharding.Mesh | None):
    """(policy, tokenizer) of checkpoint `step` (None: the latest) of an open checkpointer."""
    from flax import nnx

    config = checkpointer.saved_config(step)
    policy, tokenizer = build_policy(config.model, seed=config.seed, abstract=True)
    graphdef, params = nnx.split(policy)
    _, params = checkpointer.restore_params(_restore_targets(params, mesh), step)
    return nnx.merge(graphdef, params), tokenizer


def _restore_targets(params: Any, mesh: jax.sharding.Mesh | None) -> Any:
    """Abstract `params` placed by `state_shardings` over `mesh`, or with no mesh on one local
    device (never the saved topology, which may span devices this process does not have)."""
    if mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]), params)
    else:
        from entropy_rl.parallel import state_shardings

        shardings = state_shardings(params, mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)
