"""Benchmark: the online semantic-entropy metric of one RL step (G groups of n answers).

Baseline: the straightforward clustering, one `rewards.answers_equivalent` call per pair of
answers in a group (no string fast path, no batching, no cache). Measured against it, in the
same run: `group_semantic_entropy` with a cold cache (first step) and a warm cache (a later
step seeing the same answers), and `exact_match_only=True`. Entropies must agree.

    python tools/bench/semantic_entropy_clustering.py --groups 64 --n 8
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from entropy_rl import semantic_entropy as se
from entropy_rl.rewards import answers_equivalent, close_all_pools, shared_pool

# Answers an RL policy writes: equivalent forms of a few values, junk, and no answer at all.
FORMS = [["12", "12.0", " 12 "], ["\\frac{1}{2}", "0.5", "1/2"], ["7"], ["-3", "-3.0"], ["x^2+1", "1+x^2"], ["\\sqrt{2}"]]


def make_groups(num_groups: int, n: int, seed: int) -> list[list[str | None]]:
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(num_groups):
        values = rng.choice(len(FORMS), size=rng.integers(1, 4), replace=False)
        group = []
        for _ in range(n):
            if rng.random() < 0.1:
                group.append(None)
            else:
                forms = FORMS[int(rng.choice(values))]
                group.append(forms[int(rng.integers(len(forms)))])
        groups.append(group)
    return groups


def naive_entropy(group: list[str | None]) -> float:
    parent = list(range(len(group)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(group)), 2):
        if group[i] is not None and group[j] is not None and answers_equivalent(group[i], group[j]):
            parent[find(j)] = find(i)
    return se.cluster_entropy([find(i) for i in range(len(group))])


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    groups = make_groups(args.groups, args.n, args.seed)
    shared_pool().map("entropy_rl.rewards.math_check:math_equivalent", [("1", "1")])  # start the workers untimed
    baseline, t_base = timed(lambda: np.array([naive_entropy(g) for g in groups], np.float32))
    se.clear_equivalence_cache()
    cold, t_cold = timed(lambda: se.group_semantic_entropy(groups))
    warm, t_warm = timed(lambda: se.group_semantic_entropy(groups))
    exact, t_exact = timed(lambda: se.group_semantic_entropy(groups, exact_match_only=True))
    np.testing.assert_allclose(cold, baseline, atol=1e-6)
    np.testing.assert_allclose(warm, baseline, atol=1e-6)
    print(f"{args.groups} groups x {args.n} answers; mean semantic entropy {baseline.mean():.4f} "
          f"(exact-match only: {exact.mean():.4f})")
    print(f"baseline  per-pair answers_equivalent      {t_base * 1e3:9.1f} ms   1.0x")
    for name, seconds in [("cold cache (first step)", t_cold), ("warm cache (later step)", t_warm),
                          ("exact_match_only", t_exact)]:
        print(f"group_semantic_entropy {name:<20}{seconds * 1e3:9.1f} ms   {t_base / seconds:.1f}x faster")
    close_all_pools()


if __name__ == "__main__":
    main()
