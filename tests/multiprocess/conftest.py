"""`launch`: run a command as 2 JAX processes x 4 CPU devices on 127.0.0.1 (`entropy_rl.launch`).

The processes import this checkout's entropy_rl (PYTHONPATH = the repository root) and are
killed, all of them, when one fails or the time bound passes; a failure shows every
process's last output lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from entropy_rl.launch import LaunchResult, launch as launch_processes

REPOSITORY = Path(__file__).resolve().parents[2]
TAIL_LINES = 80  # a stall report: one line and every thread's stack


def _failure_report(result: LaunchResult) -> str:
    parts = [f"processes exited with {result.returncodes}{' (timed out)' if result.timed_out else ''}"]
    for process_id, lines in enumerate(result.output):
        parts.append(f"--- process {process_id}, last {TAIL_LINES} lines:")
        parts += lines[-TAIL_LINES:]
    return "\n".join(parts)


def run_processes(args: list[str], *, num_processes: int = 2, devices: int = 4, timeout_s: float = 240,
                  check: bool = True, cwd: str | os.PathLike | None = None, env: dict | None = None,
                  kill_when=None) -> LaunchResult:
    """Run `python <args>` as num_processes JAX processes (extra environment `env`); fails
    the test (with their output) unless all exit 0 within timeout_s, when check=True.
    kill_when: see `entropy_rl.launch.launch` (check then only fails on a timeout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]),
               TOKENIZERS_PARALLELISM="false", **(env or {}))
    result = launch_processes([sys.executable, *args], num_processes=num_processes, devices=devices,
                              timeout_s=timeout_s, env=env, cwd=None if cwd is None else str(cwd), echo=None,
                              kill_when=kill_when)
    if check and (result.timed_out or (result.returncode != 0 and not result.stopped)):
        pytest.fail(_failure_report(result), pytrace=False)
    return result


@pytest.fixture
def launch():
    """The `run_processes` function."""
    return run_processes
