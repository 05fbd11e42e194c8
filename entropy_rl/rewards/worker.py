"""The verifier worker process: `main([MEMORY_LIMIT_MB, WARM_UP, PRELOAD])` in a fresh
interpreter started by pool.py (PRELOAD: comma-separated modules to import first).

Reads pickled tasks `(target, args, timeout_s)` from stdin and answers `(status, value)` on
stdout (multiprocessing.connection framing), after a first `"ready"` once its imports (and,
with WARM_UP = 1, each preloaded module's `warm_up()`) are done. `target` is
`"module:function"`. Each item runs under an interval timer; an item that outlives it answers
"timeout" and the worker carries on. A hang the timer cannot interrupt (C code) is the
parent's to kill. End of input (the parent closed the pipe or died) ends the worker.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Any

from entropy_rl.failures import quiet_library_noise

OK, ERROR, TIMEOUT = "ok", "error", "timeout"
PRELOAD_MODULES = ("entropy_rl.rewards.math_check",)  # the pool's default
_PR_SET_PDEATHSIG = 1


class _ItemTimeout(BaseException):
    """Raised by the item timer. A BaseException so library `except Exception` blocks
    (sympy, math-verify) cannot swallow it."""


def _raise_item_timeout(signum, frame):
    raise _ItemTimeout()


def _resolve(target: str):
    """`"package.module:function"` -> the function."""
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run_item(target: str, args: tuple, timeout_s: float) -> tuple[str, Any]:
    """One item under an interval timer -> (status, value or error text)."""
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            value = _resolve(target)(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return OK, value
    except _ItemTimeout:
        return TIMEOUT, None
    except Exception as error:  # noqa: BLE001 - any failure of a check is one counted error
        return ERROR, f"{type(error).__name__}: {str(error)[:200]}"


def _isolate_process(memory_limit_mb: int) -> tuple[Connection, Connection]:
    """Signals, death with the parent, memory cap; the protocol moves off fds 0/1 so a stray
    print in a library can never corrupt it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _raise_item_timeout)
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends the worker
        pass
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):  # some systems (macOS) refuse an address-space cap
            pass
    reader = Connection(os.dup(0), writable=False)
    writer = Connection(os.dup(1), readable=False)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    return reader, writer


def main(argv: list[str]) -> int:
    memory_limit_mb, warm_up, preload = int(argv[0]), int(argv[1]), argv[2]
    reader, writer = _isolate_process(memory_limit_mb)
    quiet_library_noise()
    for module_name in filter(None, preload.split(",")):
        module = importlib.import_module(module_name)
        if warm_up and hasattr(module, "warm_up"):
            module.warm_up()
    writer.send("ready")
    while True:
        try:
            task = reader.recv()
        except (EOFError, OSError):
            return 0
        writer.send(run_item(*task))

