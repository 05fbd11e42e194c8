"""Writing and resuming a run's Orbax checkpoints: `Checkpointer`, the trainer's side of
`entropy_rl.checkpoints` (the layout, the checksums and the reading of a step are there).

Saving is asynchronous: the arrays are copied off the devices, then written in the
background while training goes on; `wait()` blocks until the files are final. Orbax writes
each step to a temporary directory and renames it when complete, so a run killed at any
moment resumes from its last complete checkpoint. Arrays are restored with the shardings of
the target (abstract) state, so a run resumes on the mesh it is started with.

Faults (each reported as a `CheckpointError` naming the step, the directory and the cause):

- a damaged step is `CheckpointCorrupt` (`entropy_rl.checkpoints`); `Checkpointer.resume`
  moves it aside to `checkpoints/corrupt-<step>-<time>` and continues from the newest intact
  step; readers (`entropy_rl.policy.load_policy`) skip it without moving anything;
- resuming under a changed config: the harmless changes (`HARMLESS_CHANGES`: total_steps,
  logging, eval and checkpoint cadence, the mesh, resume flags) are listed, any other change
  is refused (`ResumeConfigError`, naming the keys) unless `resume_allow_changes=true`;
- a save that fails (disk full, permissions), in the background or not, raises
  `CheckpointSaveError` at the next `check()` / `save()` / `wait()`; the previous checkpoints
  stay as they were (`entropy_rl.failures.quiet_library_noise` keeps Orbax's own tracebacks
  of it off the terminal);
- `resume=false` on a used run directory, or a resume that finds every checkpoint damaged,
  moves all of the old run's files aside (`set_aside_previous_run`), it never deletes them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from entropy_rl.checkpoints import (CHECKSUMS_ITEM, CheckpointCorrupt, CheckpointError, CheckpointReader, abstract_tree,
                                    array_digests, failure_cause)
from entropy_rl.train.config import TrainConfig, config_diff, config_from_dict, config_to_dict
from entropy_rl.train.rundir import LOCK_FILE
from entropy_rl.train.signals import deferred_interrupts

# Config keys (a trailing "." covers a whole section) that may change when a run resumes: they
# change neither the arrays, nor the data, nor what the run computes.
HARMLESS_CHANGES = ("run_dir", "total_steps", "resume", "resume_allow_changes", "max_consecutive_nonfinite",
                    "stall_timeout_s", "logging.", "eval.every_steps", "checkpoint.", "mesh.")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class CheckpointSaveError(CheckpointError):
    """Writing a checkpoint failed."""


class ResumeConfigError(CheckpointError):
    """The run directory's checkpoint was saved under a config that differs in a way that matters."""


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


class Restored(NamedTuple):
    """What `Checkpointer.restore` returns: arrays placed like the targets, JSON as saved."""

    step: int
    params: Any
    train_state: Any
    data_state: dict
    config: TrainConfig


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


class Checkpointer(CheckpointReader):
    """RUN_DIR/checkpoints through an `orbax.checkpoint.CheckpointManager`, read and written.

    Usage in a training loop:

        ckpt = Checkpointer(run_dir, max_to_keep=2, async_save=True)
        restored = ckpt.restore(params=params, train_state=train_state, config=config)  # None: fresh run
        ...
        ckpt.save(step, params=..., train_state=..., data_state=iterator.state_dict(), config=config)
        ...
        ckpt.close()   # waits for the last asynchronous save
    """

    config_type = TrainConfig

    def __init__(self, run_dir: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        """read_only: opened as a `CheckpointReader` is (no directory created, no unfinished
        temporary checkpoint removed); `resume` then skips a damaged step without moving it."""
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,  # what a killed run left half-written
        )
        super().__init__(run_dir, options=options)
        self._async = async_save
        self._pending: int | None = None  # the step being written in the background
        self._failed = False  # a save failed (and was reported): nothing more to wait for

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Checkpointer":
        """The checkpointer of `config.run_dir` with the config's keep / async settings."""
        return cls(config.run_dir, max_to_keep=config.checkpoint.max_to_keep,
                   async_save=config.checkpoint.async_save)

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
                                  f"{failure_cause(error)}. Training stopped; {kept}.") from None

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
            params=ocp.args.StandardRestore(abstract_tree(params)),
            train_state=ocp.args.StandardRestore(abstract_tree(train_state)),
            data_state=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        restored = self._restore(step, args, {"params": params, "train_state": train_state}, config)
        return Restored(step, restored.params, restored.train_state, restored.data_state,
                        config_from_dict(restored.config, check_paths=False))

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
                super().close()
