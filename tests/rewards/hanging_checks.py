"""Checks that misbehave, run by verifier workers in tests (imported as
`tests.rewards.hanging_checks` from the repository root)."""

import os
import signal
import time


def sleep_in_python(seconds: float) -> bool:
    """A hang the worker's own timer interrupts."""
    time.sleep(seconds)
    return True


def hang_past_timer(seconds: float) -> bool:
    """A hang the worker's timer cannot reach (as C code would): SIGALRM is blocked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    return True


def crash(code: int) -> bool:
    """A worker that dies mid-item (segfault, OOM kill)."""
    os._exit(code)


def echo(value):
    """Answer `value`: a well-behaved check."""
    return value


def raise_error(message: str) -> bool:
    raise ValueError(message)
