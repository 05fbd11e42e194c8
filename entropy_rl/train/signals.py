"""Stopping a training run on a signal without losing work.

- SIGTERM (what a scheduler sends before preemption or a time limit): `StopSignals` records it,
  the loop finishes the step it is in, saves a checkpoint of that step (unless it has just
  saved one), waits until it is on disk and raises `Preempted`, whose message names the step
  and directory; the CLI prints it and exits with 128 + SIGTERM = 143. A scheduler's grace
  period has to cover the rest of one step plus one save; a second SIGTERM stops at once
  (the default action), leaving the last completed checkpoint.
- Ctrl-C (SIGINT) inside `deferred_interrupts()` (the synchronous part of a checkpoint save)
  is held until the block ends, then raised as KeyboardInterrupt; the loop's cleanup then
  waits for the asynchronous part of that save, so the checkpoint is completed, not abandoned.

Handlers can only be installed from the main thread; elsewhere (a run inside a worker thread)
both are no-ops and the signals keep their usual effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Preempted", "StopSignals", "deferred_interrupts"]


class Preempted(RuntimeError):
    """The run stopped on SIGTERM after saving a checkpoint; `exit_code` = 128 + signal."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during the block (re-delivered, in order, after it)."""
    if not _in_main_thread():
        yield
        return
    held: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: held.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for signum in held:
            signal.raise_signal(signum)  # the restored handler runs: KeyboardInterrupt, StopSignals, ...


class StopSignals:
    """SIGTERM as a request to stop at the next step boundary (see the module docstring).

        stop = StopSignals.install()
        try:
            for step in ...:
                ...
                if regular_checkpoint or stop.requested:
                    checkpointer.save(step + 1, ...)
                stop.finish_if_requested(step + 1, checkpointer)
        finally:
            stop.uninstall()
    """

    def __init__(self):
        self.requested: int | None = None  # the signal received, None while none
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls) -> "StopSignals":
        """A StopSignals listening for SIGTERM (from now until `uninstall`)."""
        stop = cls()
        if _in_main_thread():
            stop._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, stop._handle)
        return stop

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:  # a second one: stop now, as without this handler
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.requested = signum

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def finish_if_requested(self, step: int, checkpointer) -> None:
        """After step `step` (whose checkpoint the caller saved when `requested`): wait until
        that checkpoint is on disk, then raise Preempted naming it."""
        if self.requested is None:
            return
        checkpointer.wait()
        saved = checkpointer.latest_step()
        name = signal.Signals(self.requested).name
        raise Preempted(f"stopped by {name} after step {step}: checkpoint {saved} is saved in "
                        f"{checkpointer.directory}; the same command resumes from it", self.requested)
