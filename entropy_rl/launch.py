"""`entropy-rl launch`: run a command as N JAX processes on this machine, as a multi-host job
would run on N hosts.

    entropy-rl launch -n 2 [--devices 4] [--timeout S] [--log-dir DIR] -- entropy-rl train ...

Each process gets the three variables `entropy_rl.parallel.initialize_distributed` reads:
JAX_COORDINATOR_ADDRESS (127.0.0.1 and a free port), JAX_NUM_PROCESSES and JAX_PROCESS_ID,
plus JAX_PLATFORMS=cpu and XLA_FLAGS=--xla_force_host_platform_device_count=<devices>
(so N x devices CPU devices in all; cross-process collectives run over gloo). Output lines
are shown prefixed with "[<process id>] ", except libraries' start-up and warning chatter
(`CHATTER`); with --log-dir every line of process i also goes to DIR/process-i.log. When one
process fails, one line names it and every process still running is killed (by its process
group id); likewise after --timeout seconds (none by default: a run ends itself when a
collective stalls: `entropy_rl.parallel.watchdog`). The exit code is the worst of the processes' codes
(124 on timeout).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

TIMEOUT_EXIT_CODE = 124
# lines of libraries that say nothing to a user of a local run (shown with --log-dir only)
CHATTER = re.compile("|".join([
    r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks",  # gloo's communicator set-up, per device
    r"Involuntary full rematerialization",  # XLA's SPMD partitioner on small CPU meshes
    r"Given directory is read only",  # orbax, on a writable directory
    r"PyTorch was not found",  # transformers, tokenizers need no torch
    r"unexpected worker hostname",  # libtpu, compiling for a TPU topology on a CPU host
]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(process_id: int, num_processes: int, port: int, devices: int,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process `process_id` of `num_processes` (base: os.environ).

    NPROC sizes the thread pool on which XLA's CPU client runs each device's part of a
    program (default: the machine's cores). A cross-process collective needs all `devices`
    local parts running at once; with about as many pool threads as devices, one thread
    busy elsewhere leaves a part unscheduled and every process waits in the collective
    forever (seen on 2 cores with 4 devices: 3 of the 4 local parts entered the last
    all-reduce). At least 4 threads per device (unless NPROC is set) leave room."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.setdefault("NPROC", str(max(os.cpu_count() or 1, 4 * devices)))
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


def _pump(process_id: int, stream, lines: list[str], echo, log) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line.rstrip("\n"))
        if log is not None:
            log.write(line)
            log.flush()
        if echo is not None and not CHATTER.search(line):
            echo.write(f"[{process_id}] {line}")
            echo.flush()
    stream.close()
    if log is not None:
        log.close()


def describe_exit(code: int) -> str:
    """"exited with code 3" / "was killed by SIGKILL" for a Popen return code."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process's group (the process and whatever it started)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def launch(command: Sequence[str], *, num_processes: int = 2, devices: int = 4, timeout_s: float = 600.0,
           env: Mapping[str, str] | None = None, cwd: str | None = None, echo=sys.stdout,
           kill_when: Callable[[], bool] | None = None, log_dir: str | None = None) -> LaunchResult:
    """Start `command` as `num_processes` JAX processes with `devices` CPU devices each and
    wait for all of them (at most timeout_s seconds; None: no limit). Kills them all when one
    fails (naming it in one line on `echo`), on timeout, or as soon as kill_when() returns
    True (polled every 20 ms; e.g. to test a restart after a crash). echo: a text stream that
    receives every line but `CHATTER`, prefixed with its process id, or None; log_dir: a
    directory that receives each process's whole output (process-<i>.log), or None.
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
            log = None
            if log_dir is not None:
                os.makedirs(log_dir, exist_ok=True)
                log = open(os.path.join(log_dir, f"process-{process_id}.log"), "w")
            pump = threading.Thread(target=_pump, args=(process_id, process.stdout, outputs[-1], echo, log),
                                    daemon=True)
            pump.start()
            pumps.append(pump)
        deadline = float("inf") if timeout_s is None else time.monotonic() + timeout_s
        timed_out, stopped = False, False
        while any(p.poll() is None for p in processes):
            failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
            if failed:  # the others would wait for it forever in a collective
                if echo is not None:
                    running = sum(p.poll() is None for p in processes)
                    echo.write(f"entropy-rl launch: process {failed[0]} {describe_exit(processes[failed[0]].returncode)}"
                               f"; stopping the {running} still running\n")
                    echo.flush()
                break
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
        prog="entropy-rl launch", description=__doc__.split("\n\n")[0].removeprefix("`entropy-rl launch`: "),
        epilog="example: entropy-rl launch -n 2 --devices 4 -- entropy-rl train total_steps=4 mesh.data=2 mesh.fsdp=4")
    parser.add_argument("-n", "--num-processes", type=int, default=2, help="JAX processes (default 2)")
    parser.add_argument("--devices", type=int, default=4, help="CPU devices per process (default 4)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before all are killed (default: no limit; size it to the job)")
    parser.add_argument("--log-dir", default=None, help="write each process's whole output to DIR/process-<i>.log")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.num_processes < 1 or args.devices < 1:
        parser.error("give -n >= 1, --devices >= 1 and a command after --")
    result = launch(command, num_processes=args.num_processes, devices=args.devices, timeout_s=args.timeout,
                    log_dir=args.log_dir)
    if result.timed_out:
        print(f"entropy-rl launch: killed all processes after {args.timeout:g}s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
