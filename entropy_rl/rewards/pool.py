"""Persistent verifier worker processes with a hard deadline on every item.

A check that hangs (sympy on adversarial LaTeX), eats memory or crashes costs that one item,
never the run: each worker bounds an item with its own interval timer (worker.py), and the
parent kills and replaces a worker that has not answered `grace_s` after the item's deadline
(a hang in C code the timer cannot interrupt) or whose pipe broke (a crash). Workers are
fresh interpreters running `entropy_rl.rewards.worker.main`, never forks of the caller, so they
are safe beside JAX's threads and never re-import the caller's `__main__`. A replacement
starts in the background and takes items once it reports ready. Every pool is closed at
interpreter exit; workers also die with the parent process (PR_SET_PDEATHSIG; they are
started from a thread that lives as long as the process, so any thread may use a pool) or on
EOF.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import math
import multiprocessing.connection
import numbers
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

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


class _Spawner:
    """One long-lived thread that starts every worker process.

    A worker asks the kernel to kill it when its parent dies (PR_SET_PDEATHSIG), and Linux
    ties that signal to the *thread* that forked it: a worker started from a short-lived
    thread (a ThreadPoolExecutor's) would die when that thread exits. Starting every worker
    from this thread, which lives as long as the process, ties the workers to the process.
    """

    def __init__(self):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = os.getpid()
        threading.Thread(target=self._serve, name="verifier-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            create, done = self._requests.get()
            try:
                done.set_result(create())
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                done.set_exception(error)

    def start(self, create: Callable[[], "_Worker"]) -> "_Worker":
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._requests.put((create, done))
        return done.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(create: Callable[[], "_Worker"]) -> "_Worker":
    """`create()` run on the process's spawner thread (a new one after a fork)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner._pid != os.getpid():
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.start(create)


def check_timeout(timeout_s: float) -> float:
    """`timeout_s` as a float if it is a finite positive number of seconds, else ValueError."""
    is_number = isinstance(timeout_s, numbers.Real) and not isinstance(timeout_s, bool)
    value = float(timeout_s) if is_number else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    return value


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

    One call at a time holds every worker; calls from other threads wait for it to end. The
    workers belong to the process, not to the thread that started them (`_Spawner`).
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
        self._workers: list[_Worker] = []  # every live worker (ready or still starting)
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()  # held by the running call, and while the worker list changes
        _OPEN_POOLS.add(self)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (empty before first use and after close)."""
        return [worker.process.pid for worker in self._workers]

    def _new_worker(self) -> _Worker:
        return _spawn(lambda: _Worker(self.memory_limit_mb, self.warm_up, self.preload))

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill `worker`; its replacement (starting in the background) goes to the caller."""
        worker.kill()
        replacement = self._new_worker()
        self._workers[self._workers.index(worker)] = replacement
        return replacement

    def _take_workers(self) -> list[_Worker]:
        """Every worker, started on first use (and afresh in a forked copy: the workers are
        the parent's). Called with the lock held."""
        if self._owner_pid != os.getpid():
            self._workers, self._owner_pid = [], os.getpid()
        if not self._workers:
            self._workers = [self._new_worker() for _ in range(self.num_workers)]
        return list(self._workers)

    def _mark_ready(self, worker: _Worker) -> None:
        """Read a starting worker's hello; a worker that cannot even start is a real error."""
        try:
            hello = worker.receiver.recv()
        except (EOFError, OSError):
            hello = None
        if hello != "ready":
            raise RuntimeError(f"verifier worker failed to start (exit code {worker.process.poll()}); see its stderr")
        worker.ready = True

    def map(self, target: str, args_list: Sequence[tuple], *, timeout_s: float = 5.0) -> list[tuple[str, Any]]:
        """Run `target(*args)` for every args tuple; one (status, value) per item, in order.

        `timeout_s` (finite, > 0) bounds each item once a worker has it (plus `grace_s`)."""
        timeout_s = check_timeout(timeout_s)
        with self._lock:
            call = _Call(self, self._take_workers(), target, args_list, timeout_s)
            try:
                while call.queue or call.busy:
                    call.step()
            except BaseException:
                for worker in list(call.busy):  # interrupted (Ctrl-C): their late answers must not leak
                    self._replace(worker)
                raise
        return call.outcomes

    def close(self) -> None:
        """Stop every worker and wait for it; idempotent."""
        with self._lock:
            workers = self._workers if self._owner_pid == os.getpid() else []
            self._workers = []
        for worker in workers:
            worker.stop()
        _OPEN_POOLS.discard(self)

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class _Call:
    """One `VerifierPool.map` call: its queue of items, the pool's workers, their deadlines."""

    def __init__(self, pool: VerifierPool, workers: list[_Worker], target: str, args_list: Sequence[tuple],
                 timeout_s: float):
        self.pool, self.target, self.args_list, self.timeout_s = pool, target, args_list, timeout_s
        self.outcomes: list[tuple[str, Any]] = [(ERROR, None)] * len(args_list)
        self.queue = collections.deque(range(len(args_list)))
        self.held = workers  # starting, idle or busy
        self.busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (item index, kill deadline)

    def step(self) -> None:
        """Dispatch, wait for the first answer, start-up or deadline, collect, expire."""
        self._dispatch()
        watched = {worker.receiver: worker for worker in self.held if worker in self.busy or not worker.ready}
        deadlines = [deadline for _, deadline in self.busy.values()]
        deadlines += [w.started_at + _STARTUP_TIMEOUT_S for w in self.held if not w.ready]
        wait_s = max(0.0, min(deadlines) - time.monotonic())
        for connection in multiprocessing.connection.wait(list(watched), wait_s):
            worker = watched[connection]
            if not worker.ready:
                self.pool._mark_ready(worker)
            else:
                self.outcomes[self.busy.pop(worker)[0]] = self._receive(worker)
        self._expire()

    def _swap(self, worker: _Worker) -> None:
        self.held[self.held.index(worker)] = self.pool._replace(worker)

    def _receive(self, worker: _Worker) -> tuple[str, Any]:
        try:
            return worker.receiver.recv()
        except (EOFError, OSError):  # crashed mid-item (segfault, memory limit, os._exit)
            self._swap(worker)
            return ERROR, "worker process died"

    def _dispatch(self) -> None:
        """Give the next items to this call's ready idle workers."""
        for worker in list(self.held):
            if self.queue and worker.ready and worker not in self.busy:
                index = self.queue.popleft()
                try:
                    worker.sender.send((self.target, tuple(self.args_list[index]), self.timeout_s))
                except OSError:  # died while idle: replace it, the item goes back to the queue
                    self.queue.appendleft(index)
                    self._swap(worker)
                    continue
                self.busy[worker] = (index, time.monotonic() + self.timeout_s + self.pool.grace_s)

    def _expire(self) -> None:
        """Kill and replace workers past their item's deadline; check startup deadlines."""
        now = time.monotonic()
        for worker, (index, deadline) in list(self.busy.items()):
            if now > deadline:  # stuck where the worker's timer cannot reach
                self.outcomes[index] = (TIMEOUT, None)
                del self.busy[worker]
                self._swap(worker)
        for worker in self.held:
            if not worker.ready and now > worker.started_at + _STARTUP_TIMEOUT_S:
                raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")


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
