"""Run progress for a terminal (tqdm's live bar) or anything else (plain periodic lines).

Redirected to a file, tqdm's bar is one long line of carriage returns; `PlainProgress` has the
part of tqdm's interface the metrics logger uses and prints instead, at most every
`every_s` seconds (and at the last step), a line such as

    step 12/120 (10%)  elapsed 0:01:05  eta 0:09:45  reward=0.41 acc=0.38 H=0.62
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class PlainProgress:
    """tqdm's `n`, `update`, `set_postfix`, `write`, `close`, as plain lines on `file`."""

    def __init__(self, *, total: int, initial: int = 0, every_s: float = 30.0, file: TextIO | None = None,
                 clock=time.monotonic):
        self.total, self.n, self.every_s = total, initial, every_s
        self.file, self._clock = file, clock
        self._start, self._start_n = clock(), initial
        self._last_print: float | None = None
        self._postfix: dict[str, Any] = {}

    def set_postfix(self, values: Mapping[str, Any], refresh: bool = True) -> None:
        del refresh
        self._postfix = dict(values)

    def update(self, count: int = 1) -> None:
        if count <= 0:  # a second row of the same step (an evaluation)
            return
        self.n += count
        now = self._clock()
        if self.n >= self.total or self._last_print is None or now - self._last_print >= self.every_s:
            self._last_print = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self._start
        done = self.n - self._start_n
        eta = elapsed / done * (self.total - self.n) if done > 0 else None
        shown = " ".join(f"{key}={value}" for key, value in self._postfix.items())
        percent = 100 * self.n // max(self.total, 1)
        return (f"step {self.n}/{self.total} ({percent}%)  elapsed {_clock(elapsed)}"
                f"{f'  eta {_clock(eta)}' if eta is not None else ''}  {shown}").rstrip()

    def write(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


def open_progress(*, total: int, initial: int, every_s: float, live: bool):
    """tqdm's bar when `live` and stderr is a terminal, else `PlainProgress` lines on stdout."""
    if live and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    return PlainProgress(total=total, initial=initial, every_s=every_s)


def say(text: str) -> None:
    """Print a line from process 0 without breaking a live progress bar."""
    import jax
    from tqdm.auto import tqdm

    if jax.process_index() == 0:
        tqdm.write(text, file=sys.stdout)
