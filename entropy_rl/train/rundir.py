"""One writer per run directory: RUN_DIR/run.lock.

A training run holds an exclusive `flock` on RUN_DIR/run.lock from start to end, and writes
its holder (host, pid, start time) into the file. A second run on the same directory is
refused with one line naming that holder. The kernel releases the lock when its process
dies, however it dies, so a killed run never blocks the next one; the record a killed run
leaves behind is reported ("taking over the lock of pid P on H, which is no longer
running"). A run that ends empties the file (it is never deleted: a process that opened it
just before would lock a deleted file).

In a multi-process job only process 0 takes the lock; the result is broadcast, so every
process of the job goes on, or every one stops with the same message. The job's other
processes write only their checkpoint shards, through process 0's checkpoint manager.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator

LOCK_FILE = "run.lock"


class RunDirLocked(RuntimeError):
    """Another process is writing to the run directory; the message names it and the remedies."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _holder(fd: int) -> dict:
    """The record in an open lock file ({} when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace")
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {started})"


def _lock(run_dir: str, log: Callable[[str], None]) -> int:
    """The open, locked lock file of `run_dir` (its fd), our record written into it."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise RunDirLocked(f"{run_dir} is in use by another training run, {_describe(holder)} ({path}); wait for it "
                           "to end or stop it, or use another run_dir") from None
    previous = _holder(fd)
    if previous:
        log(f"{path}: taking over the lock of {_describe(previous)}, which is no longer running")
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    return fd


def _agreed(ok: bool) -> bool:
    """Process 0's `ok`, on every process of a multi-process job."""
    import jax

    if jax.process_count() == 1:
        return ok
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def hold_run_dir(run_dir: str | os.PathLike, log: Callable[[str], None] = _say) -> Iterator[None]:
    """Hold RUN_DIR's lock for the block (process 0 of a job); RunDirLocked when another
    process holds it. A run directory on an object store ("gs://...") is not locked."""
    import jax

    run_dir = os.fspath(run_dir)
    if "://" in run_dir:
        yield
        return
    fd, error = None, None
    if jax.process_index() == 0:
        try:
            fd = _lock(run_dir, log)
        except RunDirLocked as locked:
            error = locked
    if not _agreed(error is None):
        raise error or RunDirLocked(f"{run_dir} is in use by another training run (process 0 of this job could "
                                    "not lock it)")
    try:
        yield
    finally:
        if fd is not None:
            os.ftruncate(fd, 0)  # a run that ended: nothing to take over
            os.close(fd)
