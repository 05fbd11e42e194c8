"""Metric sinks of a run: RUN_DIR/metrics.jsonl, TensorBoard, wandb and a live progress bar
(and RUN_DIR/config.yaml, the run's config).

The loop hands `MetricsLogger.log(step, metrics)` one flat dict of scalars per step (jax
arrays, numpy or Python numbers). They are fetched from the devices in ONE `jax.device_get`
of the whole dict, once per step, so logging adds no host syncs inside the step. Only process
0 of a multi-host run writes.

Resume: a logger started at `start_step` drops the rows of metrics.jsonl after that step (a
killed run may have logged steps past its last checkpoint; the file is rewritten atomically) and TensorBoard purges them, so a
resumed run's logs read as if it had never stopped.

A log that cannot be written (disk full, read-only) stops the run with one `LogWriteError`
line naming the step, the file and the cause, also when TensorBoard's background writer
thread is the one that failed (it never blocks the main thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from entropy_rl.config import LoggingConfig
from entropy_rl.jsonl import read_rows, rewrite_rows
from entropy_rl.train.config import TrainConfig, config_to_dict, save_config, to_yaml

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"  # the config of the latest (re)start, readable by `entropy-rl train --config`
TENSORBOARD_SUBDIR = "tensorboard"
WANDB_ID_FILE = "wandb_id.txt"
# shown on the progress bar when present (short label, metric name)
PROGRESS_KEYS: tuple[tuple[str, str], ...] = (
    ("reward", "reward/mean"),
    ("acc", "accuracy"),
    ("H", "entropy/mean"),
    ("masked", "loss/masked_fraction"),
    ("len", "response_length/mean"),
    ("tok/s", "time/tokens_per_s"),
)


class LogWriteError(RuntimeError):
    """A log of the run cannot be written (disk full, read-only, ...): the message names the
    step, the file and the cause."""


def _cannot_write(path: str, step: int | None, error: OSError) -> LogWriteError:
    cause = f"{error.strerror or error} [errno {error.errno}]" if error.errno else str(error)
    at = f" at step {step}" if step is not None else ""
    return LogWriteError(f"cannot write {path}{at}: {cause}. Free space or fix the permissions there; the same command "
                         "resumes from the last checkpoint")


class _TensorBoard:
    """tensorboardX's SummaryWriter, whose background writer thread never dies on an I/O
    error (it would, and `add_scalar` would then block forever on the full queue): the
    error is recorded, the thread goes on dropping events, and the next `add_scalars` raises
    it in the main thread as a LogWriteError."""

    def __init__(self, writer):
        self.writer, self.error, self._reported = writer, None, False
        events = writer._get_file_writer().event_writer._ev_writer  # tensorboardX's EventsWriter (its thread's)
        self.path = events._file_name
        for name in ("write_event", "flush"):
            setattr(events, name, self._guarded(getattr(events, name)))

    def _guarded(self, method):
        def call(*args, **kwargs):
            if self.error is not None:
                return None
            try:
                return method(*args, **kwargs)
            except OSError as error:
                self.error = error
                return None

        return call

    def add_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.raise_error(step)
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def raise_error(self, step: int | None) -> None:
        """LogWriteError if writing has failed (once)."""
        if self.error is not None and not self._reported:
            self._reported = True
            raise _cannot_write(self.path, step, self.error)

    def close(self) -> None:
        """Flush and close; a failure not reported yet is printed (closing never raises)."""
        with contextlib.suppress(OSError):
            self.writer.close()
        try:
            self.raise_error(None)
        except LogWriteError as error:
            print(f"warning: {error}", file=sys.stderr, flush=True)


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A dict of Python floats from scalar jax/numpy/Python values: one device->host transfer."""
    host = jax.device_get(dict(metrics))
    scalars = {}
    for name, value in host.items():
        array = np.asarray(value)
        if array.size != 1:
            raise ValueError(f"metric {name!r} is not a scalar (shape {array.shape})")
        scalars[name] = float(array.reshape(()))
    return scalars


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl, in order (empty when there is none; a torn last line
    is skipped, other unreadable lines too, with a warning)."""
    return read_rows(os.path.join(run_dir, METRICS_FILE), bad_lines="skip")


def _drop_rows_after(path: str, step: int) -> list[dict[str, Any]]:
    """Keep only the rows of a metrics.jsonl with row["step"] <= step, rewritten atomically
    (a kill during the rewrite leaves the old file whole); returns the rows kept."""
    if not os.path.exists(path):
        return []
    kept = [row for row in read_rows(path, bad_lines="set_aside") if row.get("step", -1) <= step]
    rewrite_rows(path, kept)
    return kept


class MetricsLogger:
    """Writes each step's scalars to every enabled sink; use as a context manager or close().

    logger = MetricsLogger(run_dir, config.logging, total_steps=..., start_step=resumed_step, config=config)
    logger.log(step, {"reward/mean": r, "entropy/mean": h, ...})   # jax arrays are fine
    logger.write("a message that does not break the progress bar")

    Each row also gets "time/run_s": the run's wall-clock seconds so far, across resumes (the
    resumed row's value, then this process's clock from `started`; `run_seconds`).
    """

    def __init__(self, run_dir: str | os.PathLike, logging: LoggingConfig = LoggingConfig(), *,
                 total_steps: int, start_step: int = 0, config: TrainConfig | None = None,
                 progress_keys: Sequence[tuple[str, str]] = PROGRESS_KEYS):
        self.run_dir = os.fspath(run_dir)
        self.progress_keys = tuple(progress_keys)
        self.enabled = jax.process_index() == 0
        self.started, self.earlier_s = time.time(), 0.0
        self._tensorboard = self._wandb = self._progress = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        if config is not None:
            save_config(config, os.path.join(self.run_dir, CONFIG_FILE))
        path = os.path.join(self.run_dir, METRICS_FILE)
        kept = _drop_rows_after(path, start_step if start_step else -1)  # a fresh start (step 0) rewrites the log
        self.earlier_s = max((row.get("time/run_s", 0.0) for row in kept), default=0.0)
        self._jsonl = open(path, "a")
        if logging.tensorboard:
            self._tensorboard = _TensorBoard(_open_tensorboard(self.run_dir, start_step, config))
        if logging.wandb:
            self._wandb = _open_wandb(self.run_dir, logging, config)
        from entropy_rl.train.progress import open_progress  # a live bar on a terminal, else plain lines

        self._progress = open_progress(total=total_steps, initial=start_step, every_s=logging.log_every_s,
                                       live=logging.progress_bar)

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Write one step's metrics (scalars) to every sink; returns them as Python floats."""
        scalars = to_scalars(metrics)
        if not self.enabled:
            return scalars
        row = {"step": int(step), "time": time.time(), **scalars, "time/run_s": self.run_seconds()}
        try:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        except OSError as error:
            raise _cannot_write(self._jsonl.name, step, error) from None
        if self._tensorboard is not None:
            self._tensorboard.add_scalars(step, scalars)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._progress is not None:
            shown = {label: f"{scalars[name]:.4g}" for label, name in self.progress_keys if name in scalars}
            self._progress.set_postfix(shown, refresh=False)
            self._progress.update(step - self._progress.n)
        return scalars

    def run_seconds(self, since: float | None = None) -> float:
        """Wall-clock seconds of the run: the earlier processes' (up to the last row kept on
        resume) and this one's since `since` (default: when the logger was made). Process 0's
        figure (the others start from 0)."""
        return self.earlier_s + time.time() - (self.started if since is None else since)

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Flush and close every sink."""
        if self._progress is not None:
            self._progress.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._jsonl is not None:
            with contextlib.suppress(OSError):  # a full disk was reported by `log`
                self._jsonl.close()
        self._tensorboard = self._wandb = self._progress = self._jsonl = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _open_tensorboard(run_dir: str, start_step: int, config: TrainConfig | None):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(os.path.join(run_dir, TENSORBOARD_SUBDIR), purge_step=start_step + 1 if start_step else None)
    if config is not None and not start_step:
        writer.add_text("config", "```\n" + to_yaml(config) + "\n```", global_step=0)
    return writer


def _open_wandb(run_dir: str, logging: LoggingConfig, config: TrainConfig | None):
    """A wandb run resumed across restarts of the same RUN_DIR; None (with a warning) without wandb."""
    try:
        import wandb
    except ImportError:
        warnings.warn("logging.wandb=true but wandb is not installed (pip install wandb); not logging to wandb")
        return None
    id_path = os.path.join(run_dir, WANDB_ID_FILE)
    if os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    else:
        run_id = wandb.util.generate_id()
        with open(id_path, "w") as f:
            f.write(run_id)
    return wandb.init(project=logging.wandb_project, entity=logging.wandb_entity, id=run_id, resume="allow",
                      dir=run_dir, config=config_to_dict(config) if config is not None else None)
