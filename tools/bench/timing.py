"""Interleaved best-of timing shared by the benchmarks."""

from __future__ import annotations

import time


def best_times(candidates: dict, repeats: int, *, warm_up: bool = True) -> tuple[dict, dict]:
    """({name: best wall seconds}, {name: best process CPU seconds}) of zero-argument
    callables, each called once first when warm_up, then timed once per round, the rounds
    interleaved so that a change in machine load hits all candidates alike. CPU seconds
    (all threads of this process) are less sensitive than wall time to other processes
    competing for the cores."""
    if warm_up:
        for fn in candidates.values():
            fn()
    wall = {name: float("inf") for name in candidates}
    cpu = dict(wall)
    for _ in range(repeats):
        for name, fn in candidates.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return wall, cpu
