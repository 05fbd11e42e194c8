"""Ends a process whose run stopped making progress: in a multi-process run, a collective that
cannot complete (another process died, is stuck, or runs other programs) otherwise waits
without end and without a word.

The phases that run collectives call `beat(where)` as they progress (each warm-start update,
each decode segment, each RL step). Once `arm(timeout_s)` is called, a daemon thread checks
the time since the last beat; past `timeout_s` it prints one line naming the process and the
last beat, e.g.

    entropy-rl: process 1 of 2 made no progress for 900 s after "rl step 12" (a collective
    that cannot complete: another process died or is stuck); ending it with exit code 75

followed by every thread's Python stack (where each waits), and ends the process (`os._exit`:
a thread waiting in a collective cannot be interrupted).
Until armed, `beat` only records.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable

STALLED_EXIT_CODE = 75  # EX_TEMPFAIL: the same command resumes from the last checkpoint


class Watchdog:
    """Beats and the thread that checks them (`clock`, `exit` and `file` replaceable for tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, exit: Callable[[int], None] = os._exit,
                 file=None):
        self._clock, self._exit, self._file = clock, exit, file
        self.last_beat, self.where = clock(), "start-up"
        self.timeout_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, where: str) -> None:
        """Record progress at `where` (a short phrase: "warm start update 17")."""
        self.last_beat, self.where = self._clock(), where

    def arm(self, timeout_s: float, *, poll_s: float | None = None) -> None:
        """Start checking: end the process once `timeout_s` pass without a beat (0: never)."""
        self.disarm()
        if timeout_s <= 0:
            return
        self.timeout_s, self.last_beat = timeout_s, self._clock()
        self._stop = threading.Event()
        poll = poll_s if poll_s is not None else min(10.0, timeout_s / 10)
        self._thread = threading.Thread(target=self._watch, args=(poll,), daemon=True, name="entropy-rl-watchdog")
        self._thread.start()

    def disarm(self) -> None:
        """Stop checking (beats are still recorded)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread, self.timeout_s = None, None

    def check(self) -> bool:
        """End the process (after one line) when the last beat is older than the timeout;
        returns False otherwise."""
        if self.timeout_s is None:
            return False
        idle = self._clock() - self.last_beat
        if idle < self.timeout_s:
            return False
        import jax

        print(f"entropy-rl: process {jax.process_index()} of {jax.process_count()} made no progress for "
              f"{idle:.0f} s after {self.where!r} (a collective that cannot complete: another process died or is "
              f"stuck); ending it with exit code {STALLED_EXIT_CODE}", file=self._file or sys.stderr, flush=True)
        self._dump_stacks()
        self._exit(STALLED_EXIT_CODE)
        return True

    def _dump_stacks(self) -> None:
        """Every thread's Python stack on the report's file (faulthandler needs a real file)."""
        file = self._file or sys.stderr
        try:
            faulthandler.dump_traceback(file=file, all_threads=True)
        except (AttributeError, ValueError, OSError):  # a file without a descriptor (a test's StringIO)
            import traceback

            for thread_id, frame in sys._current_frames().items():
                file.write(f"Thread {thread_id:#x}:\n{''.join(traceback.format_stack(frame))}")
        file.flush()

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            if self.check():
                return


WATCHDOG = Watchdog()
beat, arm, disarm = WATCHDOG.beat, WATCHDOG.arm, WATCHDOG.disarm
