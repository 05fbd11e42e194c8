"""Run progress for a terminal (tqdm's live bar) or anything else (plain periodic lines).

Redirected to a file, tqdm's bar is one long line of carriage returns; `PlainProgress` has the
part of tqdm's interface the metrics logger uses and prints instead, at most every
`every_s` seconds (and at the first and last step), a line such as

    step 12/120 (10%)  elapsed 0:01:05  eta 0:09:45  reward=0.41 acc=0.38 H=0.62

The eta extrapolates the time per step since the first update (which holds the compilation),
so it appears from the second update on.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class PlainProgress:
    """tqdm's `n`, `update`, `set_postfix`, `write`, `close`, as plain lines on `file`."""

    def __init__(self, *, total: int, initial: int = 0, every_s: float = 30.0, file: TextIO | None = None,
                 clock=time.monotonic, label: str = "step"):
        self.total, self.n, self.every_s, self.label = total, initial, every_s, label
        self.file, self._clock = file, clock
        self._start = clock()
        self._first_update: tuple[float, int] | None = None  # (time, n) after the first update
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
        if self._first_update is None:
            self._first_update = (now, self.n)
        if self.n >= self.total or self._last_print is None or now - self._last_print >= self.every_s:
            self._last_print = now
            self.write(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self._start
        since, n_then = self._first_update or (now, self.n)
        eta = (now - since) / (self.n - n_then) * (self.total - self.n) if self.n > n_then else None
        shown = " ".join(f"{key}={value}" for key, value in self._postfix.items())
        percent = 100 * self.n // max(self.total, 1)
        return (f"{self.label} {self.n}/{self.total} ({percent}%)  elapsed {_clock(elapsed)}"
                f"{f'  eta {_clock(eta)}' if eta is not None else ''}  {shown}").rstrip()

    def write(self, text: str) -> None:
        print(text, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


def open_progress(*, total: int, initial: int, every_s: float, live: bool, label: str = "step"):
    """tqdm's bar when `live` and stderr is a terminal, else `PlainProgress` lines on stdout."""
    if live and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, unit=label, dynamic_ncols=True)
    return PlainProgress(total=total, initial=initial, every_s=every_s, label=label)


def loss_reporter(*, label: str, total: int, every_s: float, live: bool) -> Callable[[int, float], None]:
    """`report(done, loss)` for a phase of `total` updates: a bar or plain lines (`open_progress`)
    on process 0, nothing on the others; the bar closes at `done == total`."""
    import jax

    if jax.process_index() != 0:
        return lambda done, loss: None
    progress = open_progress(total=total, initial=0, every_s=every_s, live=live, label=label)

    def report(done: int, loss: float) -> None:
        progress.set_postfix({"loss": f"{loss:.4g}"}, refresh=False)
        progress.update(done - progress.n)
        if done == total:
            progress.close()

    return report


def say(text: str) -> None:
    """Print a line from process 0 without breaking a live progress bar."""
    import jax
    from tqdm.auto import tqdm

    if jax.process_index() == 0:
        tqdm.write(text, file=sys.stdout)
