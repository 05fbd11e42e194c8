"""A dead peer is named in one line by the survivor, started as a cluster scheduler starts
processes (no launcher to name it); a peer that ends normally is not reported
(`entropy_rl.parallel.peers`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from entropy_rl.launch import free_port, process_environment
from entropy_rl.parallel.watchdog import STALLED_EXIT_CODE

pytestmark = [pytest.mark.xdist_group("processes"), pytest.mark.slow]

SCRIPT = str(Path(__file__).with_name("dead_peer.py"))
REPOSITORY = Path(__file__).resolve().parents[2]
TIMEOUT_S = 6


def run_pair(mode: str) -> list[tuple[int, str]]:
    """(exit code, output) of each process of `dead_peer.py mode`, killed after 120 s."""
    base = dict(os.environ, PYTHONPATH=str(REPOSITORY), ENTROPY_RL_PEER_TIMEOUT_S=str(TIMEOUT_S))
    port = free_port()
    processes = [subprocess.Popen([sys.executable, SCRIPT, mode], env=process_environment(i, 2, port, 1, base),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in processes]
        return [(p.returncode, output) for p, output in zip(processes, outputs)]
    finally:
        for process in processes:
            process.kill()


def test_the_survivor_names_the_dead_process_in_one_line():
    (code, output), (peer_code, _) = run_pair("kill")
    assert peer_code == -9
    assert code == STALLED_EXIT_CODE, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("entropy-rl:")]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("entropy-rl: process 1 of 2 has sent no sign of life for ")
    assert "Ending process 0 with exit code 75" in lines[0]
    assert "Terminating process because" not in output  # jax's fatal abort never came


def test_a_peer_that_finishes_first_is_not_reported():
    results = run_pair("finish")
    for process, (code, output) in enumerate(results):
        assert code == 0, output[-3000:]
        assert f"process {process} done" in output and "entropy-rl:" not in output
