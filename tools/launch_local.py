"""Run a command as N JAX processes on this machine, as a multi-host job would run on N hosts.

    python tools/launch_local.py -n 2 [--devices 4] [--timeout 600] -- entropy-rl train ...

Each process gets the three variables `entropy_rl.parallel.initialize_distributed` reads:
JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and JAX_PROCESS_ID,
plus JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=<devices>
(so N x devices CPU devices in all; cross-process collectives run over gloo). Every output
line is prefixed with "[<process id>] ". When one process fails, or the timeout passes,
every process still running is killed (by its process group id); the exit code is the worst
of the processes' codes (124 on timeout).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

TIMEOUT_EXIT_CODE = 124


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(process_id: int, num_processes: int, port: int, devices: int,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process `process_id` of `num_processes` (base: os.environ)."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return env


@dataclasses.dataclass
class LaunchResult:
    """returncodes[i]: process i's exit code (negative: killed by that signal);
    output[i]: its lines (stdout and stderr interleaved, without the prefix); timed_out;
    stopped: killed because `kill_when` said so."""

    returncodes: list[int]
    output: list[list[str]]
    timed_out: bool
    stopped: bool = False

    @property
    def returncode(self) -> int:
        """The worst code: 124 on timeout, else the largest code a process exited with, else
        128 + the signal that killed one (the others are killed once one fails), else 0."""
        if self.timed_out:
            return TIMEOUT_EXIT_CODE
        exited = [code for code in self.returncodes if code > 0]
        return max(exited) if exited else max(128 - code if code < 0 else 0 for code in self.returncodes)


def _pump(process_id: int, stream, lines: list[str], echo) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line.rstrip("\n"))
        if echo is not None:
            echo.write(f"[{process_id}] {line}")
            echo.flush()
    stream.close()


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process's group (the process and whatever it started)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(command: Sequence[str], *, num_processes: int = 2, devices: int = 4, timeout_s: float = 600.0,
           env: Mapping[str, str] | None = None, cwd: str | None = None, echo=sys.stdout,
           kill_when: Callable[[], bool] | None = None) -> LaunchResult:
    """Start `command` as `num_processes` JAX processes with `devices` CPU devices each and
    wait for all of them (at most timeout_s seconds). Kills them all when one fails, on
    timeout, or as soon as kill_when() returns True (polled every 20 ms; e.g. to test a
    restart after a crash). echo: a text stream that receives every line prefixed with its
    process id, or None.
    """
    port = free_port()
    processes, outputs, pumps = [], [], []
    try:
        for process_id in range(num_processes):
            process = subprocess.Popen(
                list(command), env=process_environment(process_id, num_processes, port, devices, env), cwd=cwd,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            processes.append(process)
            outputs.append([])
            pump = threading.Thread(target=_pump, args=(process_id, process.stdout, outputs[-1], echo), daemon=True)
            pump.start()
            pumps.append(pump)
        deadline, timed_out, stopped = time.monotonic() + timeout_s, False, False
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one failed: the others would wait for it forever in a collective
            if time.monotonic() > deadline:
                timed_out = True
                break
            if kill_when is not None and kill_when():
                stopped = True
                break
            time.sleep(0.02)
    finally:
        for process in processes:
            _kill(process)
        for process in processes:
            process.wait()
        for pump in pumps:
            pump.join(timeout=5)
    return LaunchResult([p.returncode for p in processes], outputs, timed_out, stopped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch_local.py", description=__doc__.split("\n\n")[0],
        epilog="example: python tools/launch_local.py -n 2 -- entropy-rl train total_steps=4 mesh.data=2")
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="JAX processes (default 2)")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per process (default 4)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before all are killed (default 3600)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.num_processes < 1 or args.devices < 1:
        parser.error("give -n >= 1, --devices >= 1 and a command after --")
    result = launch(command, num_processes=args.num_processes, devices=args.devices, timeout_s=args.timeout)
    if result.timed_out:
        print(f"launch_local: killed all processes after {args.timeout:g}s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
