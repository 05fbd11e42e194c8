"""Unexpected failures of a command as one line, the traceback kept in a file; library noise
that tells a user nothing kept off the terminal.

`report_failure` is called from inside an `except` block: it appends the current traceback to
`log_path` (a temporary file when None or not writable) and prints one line naming the error
and where its traceback is; `--debug` on any command's line shows the traceback instead.

`quiet_library_noise` is the one process-wide change the package makes, called once by the
entry points (`entropy-rl`, the verifier workers); importing the package changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable


def report_failure(prefix: str, error: BaseException, log_path: str | None = None) -> int:
    """Print `prefix: ErrorType: message (traceback in PATH; --debug shows it)` and return 1."""
    paths = [log_path] if log_path else []
    paths.append(os.path.join(tempfile.gettempdir(), f"entropy-rl-{os.getpid()}.log"))
    where = " (--debug shows the traceback)"
    for path in paths:
        with contextlib.suppress(OSError):
            with open(path, "a") as f:
                f.write(traceback.format_exc())
            where = f" (traceback in {path}; --debug shows it)"
            break
    lines = (str(error).strip() or type(error).__name__).splitlines()
    print(f"{prefix}: {type(error).__name__}: " + "\n  ".join(lines[:8]) + where, file=sys.stderr)
    return 1


def quiet_library_noise() -> None:
    """Drop library output that tells a user nothing, for the rest of the process (idempotent):

    - transformers' "PyTorch was not found" advice (the tokenizers need no torch);
    - orbax's "Given directory is read only" (checkpoints are opened read-only to evaluate,
      rank or export them) and its tracebacks of a failed save (`_LibraryNoise`), on the absl
      and asyncio loggers;
    - the late TensorStore write callbacks of a failed save (`sys.unraisablehook`);
    - math-verify's warning that its signal-based timeouts are off (each verifier worker bounds
      an item with its own timer, `entropy_rl.rewards.pool`).
    """
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LibraryNoise) for f in logger.filters):
            logger.addFilter(_LibraryNoise())
    if not getattr(sys.unraisablehook, "drops_late_write_callbacks", False):
        sys.unraisablehook = _drop_late_write_callbacks(sys.unraisablehook)
    logging.getLogger("math_verify").setLevel(logging.ERROR)


class _LibraryNoise(logging.Filter):
    """Drops orbax's "Given directory is read only" notice and the error records of Orbax's
    failures: a failed save logs its traceback several times from its background threads
    (about 200 lines per array written) before `wait` re-raises it, and asyncio reports the
    sibling tasks' errors when they are collected; every Orbax call of
    `entropy_rl.train.checkpoint` turns that error into one CheckpointError message."""

    @staticmethod
    def _from_orbax(filename: str) -> bool:
        return f"{os.sep}orbax{os.sep}" in filename

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Given directory is read only"):
            return False
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

