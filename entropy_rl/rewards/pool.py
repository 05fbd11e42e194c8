"""Persistent verifier worker processes with a hard deadline on every item.

A check that hangs (sympy on adversarial LaTeX), eats memory or crashes costs that one item,
never the run: each worker bounds an item with its own interval timer, and the parent kills
and replaces a worker that has not answered `grace_s` after the item's deadline (a hang in C
code the timer cannot interrupt) or whose pipe broke (a crash). Workers come from the
'forkserver' context, so starting one never forks the trainer (safe beside JAX's threads)
and a replacement starts in milliseconds from a server that has math-verify imported.
Every pool is closed at interpreter exit; workers also die with their fork server.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import importlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
import weakref
from typing import Any, Sequence

OK, ERROR, TIMEOUT = "ok", "error", "timeout"
PRELOAD_MODULES = ("entropy_rl.rewards.math_check",)
_PR_SET_PDEATHSIG = 1


class _ItemTimeout(BaseException):
    """Raised by the worker's timer. A BaseException so library `except Exception` blocks
    (sympy, math-verify) cannot swallow it."""


def _raise_item_timeout(signum, frame):
    raise _ItemTimeout()


def _resolve(target: str):
    """`"package.module:function"` -> the function."""
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _run_item(target: str, args: tuple, timeout_s: float) -> tuple[str, Any]:
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


def _worker_main(conn, memory_limit_mb: int | None) -> None:
    """Worker loop: receive (target, args, timeout_s), answer (status, value); None stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _raise_item_timeout)
    try:  # die with the fork server, which exits when the parent does
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if memory_limit_mb:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(_run_item(*task))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context, memory_limit_mb: int | None):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child_conn, memory_limit_mb), daemon=True)
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()
        self.process.close()

    def stop(self, wait_s: float = 2.0) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(wait_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


_OPEN_POOLS: "weakref.WeakSet[VerifierPool]" = weakref.WeakSet()


class VerifierPool:
    """A fixed number of persistent worker processes running checks with per-item deadlines.

    `pool.map(target, args_list, timeout_s=5)` runs `target(*args)` for each args tuple
    (`target` is `"module:function"`) and returns one `(status, value)` per item, status in
    {"ok", "error", "timeout"}. Items are spread over the workers as they free up. Use as a
    context manager or call `close()`; pools left open are closed at exit.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        grace_s: float = 1.0,
        memory_limit_mb: int | None = 4096,
        preload: Sequence[str] = PRELOAD_MODULES,
    ):
        self.num_workers = num_workers or len(os.sched_getaffinity(0))
        self.grace_s = grace_s
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        _OPEN_POOLS.add(self)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (empty before first use and after close)."""
        return [worker.process.pid for worker in self._workers]

    def _start(self) -> None:
        if not self._workers:
            self._workers = [_Worker(self._context, self.memory_limit_mb) for _ in range(self.num_workers)]

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._context, self.memory_limit_mb)

    def _submit(self, slot: int, task: tuple) -> None:
        try:
            self._workers[slot].conn.send(task)
        except OSError:  # the worker died while idle
            self._replace(slot)
            self._workers[slot].conn.send(task)

    def map(self, target: str, args_list: Sequence[tuple], *, timeout_s: float = 5.0) -> list[tuple[str, Any]]:
        """Run `target(*args)` for every args tuple; one (status, value) per item, in order."""
        outcomes: list[tuple[str, Any]] = [(ERROR, None)] * len(args_list)
        queue = collections.deque(range(len(args_list)))
        with self._lock:
            if queue:
                self._start()
            busy: dict[int, tuple[int, float]] = {}  # slot -> (item index, kill deadline)
            while queue or busy:
                for slot in range(self.num_workers):
                    if slot not in busy and queue:
                        index = queue.popleft()
                        self._submit(slot, (target, tuple(args_list[index]), timeout_s))
                        busy[slot] = (index, time.monotonic() + timeout_s + self.grace_s)
                wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
                ready = multiprocessing.connection.wait([self._workers[slot].conn for slot in busy], wait_s)
                for slot, (index, deadline) in list(busy.items()):
                    if self._workers[slot].conn in ready:
                        outcomes[index] = self._receive(slot)
                    elif time.monotonic() > deadline:  # stuck where the timer cannot reach
                        outcomes[index] = (TIMEOUT, None)
                        self._replace(slot)
                    else:
                        continue
                    del busy[slot]
        return outcomes

    def _receive(self, slot: int) -> tuple[str, Any]:
        try:
            return self._workers[slot].conn.recv()
        except (EOFError, OSError):  # crashed mid-item (segfault, memory limit, os._exit)
            self._replace(slot)
            return ERROR, "worker process died"

    def close(self) -> None:
        """Stop every worker and wait for it; idempotent."""
        with self._lock:
            for worker in self._workers:
                worker.stop()
            self._workers = []
        _OPEN_POOLS.discard(self)

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_shared_pool: VerifierPool | None = None
_shared_lock = threading.Lock()


def shared_pool(num_workers: int | None = None) -> VerifierPool:
    """The process-wide pool used by `math_rewards` and `answers_equivalent`; a request for a
    different worker count replaces it."""
    global _shared_pool
    wanted = num_workers or len(os.sched_getaffinity(0))
    with _shared_lock:
        if _shared_pool is None or _shared_pool.num_workers != wanted:
            if _shared_pool is not None:
                _shared_pool.close()
            _shared_pool = VerifierPool(wanted)
        return _shared_pool


def close_all_pools() -> None:
    """Close every open pool (registered with atexit)."""
    for pool in list(_OPEN_POOLS):
        pool.close()


atexit.register(close_all_pools)
