"""Persistent verifier worker processes with a hard deadline on every item.

A check that hangs (sympy on adversarial LaTeX), eats memory or crashes costs that one item,
never the run: each worker bounds an item with its own interval timer (worker.py), and the
parent kills and replaces a worker that has not answered `grace_s` after the item's deadline
(a hang in C code the timer cannot interrupt) or whose pipe broke (a crash). Workers are
fresh interpreters running `entropy_rl.rewards.worker.main`, never forks of the caller, so they
are safe beside JAX's threads and never re-import the caller's `__main__`. A replacement
starts in the background and takes items once it reports ready. Every pool is closed at
interpreter exit; workers also die with the parent (PR_SET_PDEATHSIG) or on EOF.
"""

from __future__ import annotations

import atexit
import collections
import multiprocessing.connection
import os
import pathlib
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any, Sequence

from entropy_rl.rewards.worker import ERROR, OK, PRELOAD_MODULES, TIMEOUT

__all__ = ["ERROR", "OK", "TIMEOUT", "VerifierPool", "close_all_pools", "shared_pool"]

# The directory holding the `entropy_rl` package, so workers import this very copy.
_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
_STARTUP_TIMEOUT_S = 120.0
# argv: package root, memory limit, warm-up, preload modules. The root goes first on sys.path only when it is not
# there already (a source checkout), so an installed package keeps the usual import order.
_WORKER_COMMAND = (
    "import sys; sys.path[:0] = [] if sys.argv[1] in sys.path else [sys.argv[1]]; "
    "from entropy_rl.rewards.worker import main; sys.exit(main(sys.argv[2:]))"
)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Worker:
    """One worker process and the parent's ends of its pipes; `ready` once it said so."""

    def __init__(self, memory_limit_mb: int | None, warm_up: bool, preload: Sequence[str]):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # one core per worker
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_COMMAND, _PACKAGE_ROOT, str(memory_limit_mb or 0), str(int(warm_up)),
             ",".join(preload)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
        )
        self.sender = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self.receiver = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()
        self.ready = False
        self.started_at = time.monotonic()

    def kill(self) -> None:
        self.process.kill()
        self._reap()

    def stop(self, wait_s: float = 2.0) -> None:
        """Close its input (the worker exits on EOF); kill it if it does not."""
        self.sender.close()
        try:
            self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        self.process.wait()
        for connection in (self.sender, self.receiver):
            connection.close()


_OPEN_POOLS: "weakref.WeakSet[VerifierPool]" = weakref.WeakSet()


class VerifierPool:
    """A fixed number of persistent worker processes running checks with per-item deadlines.

    `pool.map(target, args_list, timeout_s=5)` runs `target(*args)` for each args tuple
    (`target` is `"module:function"`, importable by the workers) and returns one
    `(status, value)` per item, status in {"ok", "error", "timeout"}. Items go to workers as
    they free up. An item takes at most `timeout_s + grace_s` once a worker has it. Workers
    start on first use and import the `preload` modules (math-verify's check by default); with
    `warm_up` each one also runs those modules' `warm_up()` before taking items (about 2 s of
    CPU that the first math items would otherwise pay inside their deadlines). `memory_limit_mb` caps each
    worker's address space (a check that needs more fails as one error). Use as a context
    manager or call `close()`; open pools are closed at exit.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        grace_s: float = 1.0,
        memory_limit_mb: int | None = 4096,
        warm_up: bool = True,
        preload: Sequence[str] = PRELOAD_MODULES,
    ):
        self.num_workers = num_workers or available_cores()
        self.grace_s = grace_s
        self.memory_limit_mb = memory_limit_mb
        self.warm_up = warm_up
        self.preload = tuple(preload)
        self._workers: list[_Worker] = []
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        _OPEN_POOLS.add(self)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (empty before first use and after close)."""
        return [worker.process.pid for worker in self._workers]

    def _new_worker(self) -> _Worker:
        return _Worker(self.memory_limit_mb, self.warm_up, self.preload)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._new_worker()

    def _mark_ready(self, slot: int) -> None:
        """Read a starting worker's hello; a worker that cannot even start is a real error."""
        worker = self._workers[slot]
        try:
            hello = worker.receiver.recv()
        except (EOFError, OSError):
            hello = None
        if hello != "ready":
            raise RuntimeError(f"verifier worker failed to start (exit code {worker.process.poll()}); see its stderr")
        worker.ready = True

    def _receive(self, slot: int) -> tuple[str, Any]:
        try:
            return self._workers[slot].receiver.recv()
        except (EOFError, OSError):  # crashed mid-item (segfault, memory limit, os._exit)
            self._replace(slot)
            return ERROR, "worker process died"

    def map(self, target: str, args_list: Sequence[tuple], *, timeout_s: float = 5.0) -> list[tuple[str, Any]]:
        """Run `target(*args)` for every args tuple; one (status, value) per item, in order."""
        outcomes: list[tuple[str, Any]] = [(ERROR, None)] * len(args_list)
        queue = collections.deque(range(len(args_list)))
        with self._lock:
            if self._owner_pid != os.getpid():  # a forked copy: the workers are the parent's
                self._workers, self._owner_pid = [], os.getpid()
            if queue and not self._workers:
                self._workers = [self._new_worker() for _ in range(self.num_workers)]
            busy: dict[int, tuple[int, float]] = {}  # slot -> (item index, kill deadline)
            try:
                while queue or busy:
                    self._step(queue, busy, outcomes, args_list, target, timeout_s)
            except BaseException:
                for slot in list(busy):  # interrupted (Ctrl-C): their late answers must not leak
                    self._replace(slot)
                raise
        return outcomes

    def _step(self, queue, busy, outcomes, args_list, target: str, timeout_s: float) -> None:
        """Dispatch, wait for the first answer or deadline, collect, expire."""
        self._dispatch(queue, busy, args_list, target, timeout_s)
        deadlines = [deadline for _, deadline in busy.values()]
        deadlines += [w.started_at + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
        watched = {self._workers[slot].receiver: slot for slot in range(self.num_workers)
                   if slot in busy or not self._workers[slot].ready}
        ready = multiprocessing.connection.wait(list(watched), max(0.0, min(deadlines) - time.monotonic()))
        for slot in sorted(watched[connection] for connection in ready):
            if not self._workers[slot].ready:
                self._mark_ready(slot)
            else:
                outcomes[busy.pop(slot)[0]] = self._receive(slot)
        self._expire(busy, outcomes)

    def _dispatch(self, queue, busy, args_list, target: str, timeout_s: float) -> None:
        """Give the next items to ready idle workers."""
        for slot, worker in enumerate(self._workers):
            if queue and worker.ready and slot not in busy:
                index = queue.popleft()
                try:
                    worker.sender.send((target, tuple(args_list[index]), timeout_s))
                except OSError:  # died while idle: replace it, the item goes back to the queue
                    queue.appendleft(index)
                    self._replace(slot)
                    continue
                busy[slot] = (index, time.monotonic() + timeout_s + self.grace_s)

    def _expire(self, busy, outcomes) -> None:
        """Kill and replace workers past their item's deadline; check startup deadlines."""
        now = time.monotonic()
        for slot, (index, deadline) in list(busy.items()):
            if now > deadline:  # stuck where the worker's timer cannot reach
                outcomes[index] = (TIMEOUT, None)
                del busy[slot]
                self._replace(slot)
        for worker in self._workers:
            if not worker.ready and now > worker.started_at + _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        """Stop every worker and wait for it; idempotent."""
        with self._lock:
            if self._owner_pid == os.getpid():
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
    wanted = num_workers or available_cores()
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
