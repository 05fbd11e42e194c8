"""Verified answers per second on MATH500 ground truths, with 2 verifier workers.

Cases (one run, the 500 shipped MATH500 answers, responses `... $\\boxed{answer}$.`):
  same          each response carries its own ground truth: reward 1 (string fast path)
  same-sympy    the same pairs forced through math-verify in the workers (no fast path)
  shuffled      each response carries another problem's answer: reward 0 except repeats;
                integer-vs-integer pairs take the fast path, the rest go to math-verify
Baseline, measured in the same run on the same pairs: math-verify called in-process, one
pair after another, with its own signal timeouts (no fast path, no isolation, one core),
math-verify's and sympy's caches cleared first. Pool start-up is excluded (each case gets a fresh pool, warmed first,
so the workers' parse caches are cold). Timings are the best of --repeats
(by wall time). CPU time (parent + workers, from /proc) is printed too: on a shared, loaded
machine it is the steadier figure.

    python tools/bench/rewards.py [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time

from entropy_rl.data import load_benchmark
from entropy_rl.rewards import VerifierPool, math_rewards
from entropy_rl.rewards.math_verifier import EQUIVALENCE_CHECK, _fast_verdict


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes `pids` (from /proc)."""
    ticks = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _baseline(responses: list[str], golds: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds for in-process sequential math-verify on every pair (cold caches)."""
    from math_verify import parse, verify
    from math_verify.parser import parse_expr_cached, parse_latex_cached
    from sympy.core.cache import clear_cache

    parse_latex_cached.cache_clear()
    parse_expr_cached.cache_clear()
    clear_cache()
    start, cpu_start = time.perf_counter(), time.process_time()
    for response, gold in zip(responses, golds):
        verify(parse("\\boxed{" + gold + "}"), parse(response))
    return time.perf_counter() - start, time.process_time() - cpu_start


def _pooled(responses, golds, answers, workers: int, fast_path: bool) -> tuple[float, float, float]:
    """(wall, CPU of parent + workers) seconds on a fresh warmed pool, and the mean reward:
    math_rewards, or the raw check on every pair."""
    with VerifierPool(workers) as pool:
        pool.map(EQUIVALENCE_CHECK, [("0", "1")] * workers, timeout_s=30.0)  # start-up, excluded
        pids = pool.pids
        start, cpu_start = time.perf_counter(), time.process_time() + _cpu_seconds(pids)
        if fast_path:
            rewards = math_rewards(responses, golds, pool=pool, timeout_s=5.0).rewards.tolist()
        else:
            outcomes = pool.map(EQUIVALENCE_CHECK, list(zip(golds, answers)), timeout_s=5.0)
            rewards = [float(status == "ok" and value) for status, value in outcomes]
        seconds, cpu = time.perf_counter() - start, time.process_time() + _cpu_seconds(pids) - cpu_start
        assert pool.pids == pids, "a worker was replaced: a check timed out or crashed"
    return seconds, cpu, sum(rewards) / len(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings per case")
    args = parser.parse_args()
    golds = [problem.answer for problem in load_benchmark("math500")]
    shuffled = golds[:]
    random.Random(0).shuffle(shuffled)
    cases = [("same", golds, True), ("same-sympy", golds, False), ("shuffled", shuffled, True)]
    n = len(golds)
    print(f"MATH500: {n} pairs per case, {args.workers} workers, best of {args.repeats}")
    print(f"{'case':<12}{'to sympy':>9}{'reward':>8}{'pool ans/s':>12}{'base ans/s':>12}{'speed-up':>10}"
          f"{'pool cpu ms/ans':>17}{'base cpu ms/ans':>17}")
    for name, answers, fast_path in cases:
        responses = [f"So the final answer is $\\boxed{{{answer}}}$." for answer in answers]
        to_sympy = n if not fast_path else sum(_fast_verdict(g, a) is None for g, a in zip(golds, answers))
        pooled = min(_pooled(responses, golds, answers, args.workers, fast_path) for _ in range(args.repeats))
        baseline = min(_baseline(responses, golds) for _ in range(args.repeats))
        print(f"{name:<12}{to_sympy:>9}{pooled[2]:>8.3f}{n / pooled[0]:>12.1f}{n / baseline[0]:>12.1f}"
              f"{baseline[0] / pooled[0]:>9.2f}x{1000 * pooled[1] / n:>17.2f}{1000 * baseline[1] / n:>17.2f}")


if __name__ == "__main__":
    main()
