"""avg@k and unbiased pass@k from per-problem sample correctness, and their summaries.

Every function here is plain numpy over host data: a benchmark's results are one row per
problem holding the correctness (0/1) of its n samples, in sampling order.

- pass@k (Chen et al., 2021): probability that at least one of k samples drawn without
  replacement from the n recorded ones is correct, `1 - C(n - c, k) / C(n, k)`, computed as
  the numerically stable product `1 - prod_{i = n - c + 1}^{n} (1 - k / i)`.
- avg@k: mean accuracy of the first k samples of each problem, averaged over problems. This is
  exactly what a run with n = k would report (samples are i.i.d.), so avg@4 from an n = 32 run
  is comparable with a paper's avg@4. `accuracy` is avg@n, the lowest-variance estimate of
  the same expected value (every avg@k has expectation mean(c / n)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 4, 8, 16, 32)


def _check_counts(num_samples: np.ndarray, num_correct: np.ndarray, k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if np.any(num_samples < 1):
        raise ValueError(f"every problem needs at least one sample, got n = {num_samples.min()}")
    if np.any(num_correct < 0) or np.any(num_correct > num_samples):
        raise ValueError("num_correct must lie in [0, num_samples] for every problem")
    if np.any(k > num_samples):
        raise ValueError(f"pass@{k} needs at least k = {k} samples per problem, got n = {num_samples.min()}")


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
    """Unbiased pass@k per problem: `1 - C(n - c, k) / C(n, k)`.

    Args:
      num_samples: n, samples per problem, int scalar or [P].
      num_correct: c, correct samples per problem, int scalar or [P], 0 <= c <= n.
      k: 1 <= k <= n.

    Returns:
      float64 array of the broadcast shape of (n, c), values in [0, 1]. Uses the product
      `C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)` (1 when c = 0, and
      pass@k = 1 when n - c < k), which never forms a binomial coefficient and so stays
      exact to float64 rounding for any n.
    """
    n = np.asarray(num_samples, dtype=np.int64)
    c = np.asarray(num_correct, dtype=np.int64)
    n, c = np.broadcast_arrays(n, c)
    _check_counts(n, c, k)
    flat = [_pass_at_k_one(int(ni), int(ci), int(k)) for ni, ci in zip(n.ravel(), c.ravel())]
    return np.asarray(flat, dtype=np.float64).reshape(n.shape)


def _pass_at_k_one(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def avg_at_k(correct: Sequence[Sequence[int]] | np.ndarray, k: int) -> float:
    """avg@k: mean over problems of the accuracy of each problem's first k samples.

    Args:
      correct: [P, n] 0/1 correctness in sampling order (rows may differ in n; each needs n >= k).
      k: number of samples per problem to average, 1 <= k <= n.

    Returns:
      `mean_p (1/k) sum_{j < k} correct[p, j]`, a float in [0, 1].
    """
    rows = [np.asarray(row, dtype=np.float64) for row in correct]
    if not rows:
        raise ValueError("avg@k of an empty set of problems")
    _check_counts(np.array([len(r) for r in rows]), np.array([r.sum() for r in rows]), k)
    return float(np.mean([row[:k].mean() for row in rows]))


def metric_ks(n: int, ks: Sequence[int] = DEFAULT_KS) -> tuple[int, ...]:
    """The ks of `ks` that n samples support (k <= n), in increasing order."""
    return tuple(sorted(k for k in set(ks) if k <= n))


def benchmark_metrics(correct: Sequence[Sequence[int]], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Summary of one benchmark from its per-problem correctness lists.

    Args:
      correct: [P, n] 0/1 correctness per problem and sample; every problem has the same n.
      ks: the k values to report; those above n are left out.

    Returns:
      {"num_problems", "n", "accuracy" (= avg@n), "avg@k" and "pass@k" for each k}.
    """
    lengths = {len(row) for row in correct}
    if len(lengths) != 1:
        raise ValueError(f"every problem of a benchmark needs the same n, got {sorted(lengths)}")
    (n,) = lengths
    counts = np.array([int(np.sum(row)) for row in correct])
    summary: dict[str, float] = {"num_problems": len(correct), "n": n, "accuracy": avg_at_k(correct, n)}
    for k in metric_ks(n, ks):
        summary[f"avg@{k}"] = avg_at_k(correct, k)
        summary[f"pass@{k}"] = float(pass_at_k(n, counts, k).mean())
    return summary


def average_metrics(per_benchmark: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Macro-average over benchmarks of every score that all of them report.

    `num_problems` is summed; a score some benchmark lacks (e.g. pass@32 next to an n = 4
    benchmark) is left out rather than averaged over a subset.
    """
    if not per_benchmark:
        return {}
    tables = list(per_benchmark.values())
    shared = [key for key in tables[0] if all(key in t for t in tables) and key not in ("num_problems", "n")]
    average: dict[str, float] = {"num_problems": sum(int(t["num_problems"]) for t in tables)}
    average.update({key: float(np.mean([t[key] for t in tables])) for key in shared})
    return average


def _score_columns(tables: Sequence[Mapping[str, float]]) -> list[str]:
    """Score keys in display order: accuracy, then avg@k by k, then pass@k by k."""
    keys = {key for t in tables for key in t if "@" in key}

    def k_of(key: str) -> int:
        return int(key.split("@")[1])

    avg = sorted((key for key in keys if key.startswith("avg@")), key=k_of)
    pas = sorted((key for key in keys if key.startswith("pass@")), key=k_of)
    return ["accuracy", *avg, *pas]


def markdown_table(per_benchmark: Mapping[str, Mapping[str, float]], average: Mapping[str, float] | None = None) -> str:
    """A markdown table, one row per benchmark (+ "average"), scores in percent with 2 decimals."""
    rows = dict(per_benchmark)
    if average is not None and len(per_benchmark) > 1:
        rows["average"] = average
    columns = _score_columns(list(rows.values()))
    header = ["benchmark", "problems", "n", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, table in rows.items():
        cells = [name, str(int(table["num_problems"])), str(int(table["n"])) if "n" in table else ""]
        cells += [f"{100.0 * table[c]:.2f}" if c in table and math.isfinite(table[c]) else "" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def flat_metrics(summary: Mapping, prefix: str = "eval") -> dict[str, float]:
    """`{"<prefix>/<benchmark>/<score>": value}` for logging, from an `evaluate` summary.

    The average over benchmarks appears as `<prefix>/average/<score>` when there are several.
    """
    flat: dict[str, float] = {}
    tables = dict(summary["benchmarks"])
    if len(tables) > 1:
        tables["average"] = summary["average"]
    for name, table in tables.items():
        for key, value in table.items():
            if "@" in key or key == "accuracy":
                flat[f"{prefix}/{name}/{key}"] = float(value)
    return flat
