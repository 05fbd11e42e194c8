"""Survivors name a dead peer: in a multi-process run, every process publishes a sign of life
and watches the others', so a process that dies (killed, out of memory, its host lost) is
named in one line by the ones left, e.g.

    entropy-rl: process 1 of 2 has sent no sign of life for 61 s (its last: "rl step 12"):
    it died or lost its network; see its own log. Ending process 0 with exit code 75 (the
    same command resumes from the last checkpoint)

Without it a survivor waits in its next collective until jax's coordination service misses
the dead process's heartbeats (100 s by default) and then aborts with XLA's fatal log and a
C++ stack trace that names neither the process nor what to do. The monitor's timeout is
shorter than jax's, so its line comes first.

Mechanism: a daemon thread writes `entropy_rl/alive/<process>` = "<count> <where>" in the
coordination service's key-value store every `interval_s` and reads every process's entry;
an entry that has not changed for `timeout_s` (measured on this process's clock from when it
first saw the entry, or from the start for one never seen) names its process as dead. The
store lives in process 0: when process 0 dies, the store's calls fail and the survivors say
that the coordinator is unreachable. "<where>" is the watchdog's last beat
(`parallel/watchdog.py`), which names the step. A process that ends writes "exited"
when its interpreter exits, before jax's own exit handler (processes finish at different
times; the handler waits for every process): its peers no longer expect signs of life from
it, while its own monitor keeps watching through that wait, which a dead peer would make
last jax's 100 s.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from entropy_rl.parallel.watchdog import STALLED_EXIT_CODE, WATCHDOG

KEY_PREFIX = "entropy_rl/alive/"
TIMEOUT_VARIABLE = "ENTROPY_RL_PEER_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
EXITED = "exited"


class KeyValueStore(Protocol):
    """The part of jax's distributed runtime client the monitor uses."""

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None: ...

    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]: ...


class PeerMonitor:
    """Publishes this process's sign of life and ends the process when a peer's stops.

    `clock`, `exit` and `file` are replaceable for tests; `where` gives the text published
    beside the count (default: the watchdog's last beat)."""

    def __init__(self, store: KeyValueStore, process_id: int, num_processes: int, *, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic, exit: Callable[[int], None] = os._exit,
                 file=None, where: Callable[[], str] = lambda: WATCHDOG.where):
        if timeout_s <= 0:
            raise ValueError(f"peer timeout must be > 0 s, got {timeout_s}")
        self.store, self.process_id, self.num_processes = store, process_id, num_processes
        self.timeout_s = timeout_s
        self._clock, self._exit, self._file, self._where = clock, exit, file, where
        self._count = 0
        self._started = clock()
        self._seen: dict[int, tuple[str, float]] = {}  # process -> (its entry, when it last changed)
        self._exiting = threading.Event()
        self._publishing = threading.Lock()  # "exited" is never overwritten by a count

    def check(self) -> bool:
        """Publish once and read the others; end the process (after one line) on a dead peer or
        an unreachable coordinator. Returns True when the watch is over: the process ended, or
        it is exiting and so are its peers."""
        now = self._clock()
        try:
            with self._publishing:
                if not self._exiting.is_set():
                    self._count += 1
                    self.store.key_value_set(f"{KEY_PREFIX}{self.process_id}", f"{self._count} {self._where()}",
                                             allow_overwrite=True)
            entries = dict(self.store.key_value_dir_get(KEY_PREFIX))
        except Exception as error:  # noqa: BLE001 - any failure of the store means process 0 is gone
            if self._exiting.is_set():  # jax's shutdown ended the store after every process exited
                return True
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return self._end(f"cannot reach the coordinator (process 0, which holds jax's coordination "
                             f"service): {first_line[:200]}")
        peers = [process for process in range(self.num_processes) if process != self.process_id]
        running = [process for process in peers if entries.get(f"{KEY_PREFIX}{process}") != EXITED]
        if self._exiting.is_set() and not running:
            return True
        for process in running:
            entry = entries.get(f"{KEY_PREFIX}{process}")
            last_entry, since = self._seen.get(process, (None, self._started))
            if entry is not None and entry != last_entry:
                self._seen[process] = (entry, now)
            elif now - since >= self.timeout_s:
                last = f'its last: "{last_entry.split(" ", 1)[1]}"' if last_entry else "none since the start"
                return self._end(f"process {process} of {self.num_processes} has sent no sign of life for "
                                 f"{now - since:.0f} s ({last}): it died or lost its network; see its own log")
        return False

    def _end(self, reason: str) -> bool:
        print(f"entropy-rl: {reason}. Ending process {self.process_id} with exit code {STALLED_EXIT_CODE} "
              f"(the same command resumes from the last checkpoint)", file=self._file or sys.stderr, flush=True)
        self._exit(STALLED_EXIT_CODE)
        return True

    def start(self, interval_s: float) -> threading.Thread:
        """Check every `interval_s` seconds on a daemon thread, for the life of the process."""
        def watch():
            while not self.check():
                time.sleep(interval_s)

        thread = threading.Thread(target=watch, daemon=True, name="entropy-rl-peers")
        thread.start()
        atexit.register(self.exiting)  # registered after jax's exit handler: runs before it
        return thread

    def exiting(self) -> None:
        """Tell the peers this process is exiting (called at interpreter exit)."""
        with self._publishing:
            self._exiting.set()
            try:
                self.store.key_value_set(f"{KEY_PREFIX}{self.process_id}", EXITED, allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the coordinator is gone already: nothing to tell
                pass


def peer_timeout_s(env=None) -> float:
    """The monitor's timeout: $ENTROPY_RL_PEER_TIMEOUT_S (0 turns it off), else 60 s."""
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_VARIABLE, "")
    try:
        value = float(text) if text.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r} must be >= 0 (0 turns the peer monitor off)")
    return value


def watch_peers() -> PeerMonitor | None:
    """Start the monitor on jax's distributed runtime (after `jax.distributed.initialize`);
    None when the timeout is 0. The check interval is a sixth of the timeout."""
    timeout_s = peer_timeout_s()
    if timeout_s == 0:
        return None
    import jax
    from orbax.checkpoint import multihost

    monitor = PeerMonitor(multihost.get_jax_distributed_client(), jax.process_index(), jax.process_count(),
                          timeout_s=timeout_s)
    monitor.start(interval_s=timeout_s / 6)
    return monitor
