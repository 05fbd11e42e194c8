"""The statistics of `entropy-rl compare`: pure functions of per-seed values (no I/O).

- `t_interval`: the mean over seeds and its two-sided Student-t confidence interval,
  mean +- t_{(1+c)/2, n-1} * s / sqrt(n), with s the sample standard deviation (ddof=1).
- `paired_t_test`: the paired (dependent-samples) t-test of two methods' values on the same
  seeds: d_i = a_i - b_i, t = mean(d) / (s_d / sqrt(n)), two-sided p = 2 P(T_{n-1} > |t|).
- `steps_to_collapse`: the first logged step whose mean entropy falls below a fraction of the
  entropy at the first logged step.
- `late_stage_drop`: the best held-out accuracy of a run minus its final one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values with its confidence interval [low, high] (nan bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of a - b over `n` seeds: mean difference, t statistic, two-sided p-value.

    t and p are nan when n < 2 or every difference is the same (no variance to test against)."""

    mean_difference: float
    t: float
    p: float
    n: int


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval over the finite `values` (one per seed); see the module docstring."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of a - b (`a[i]`, `b[i]` from the same seed); see the module docstring."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same seeds, got {a.shape[0]} and {b.shape[0]}")
    d = a - b
    n = len(d)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if sd == 0.0:
        return PairedTest(mean, math.nan, math.nan, n)
    t = mean / (sd / math.sqrt(n))
    return PairedTest(mean, t, float(2 * stats.t.sf(abs(t), n - 1)), n)


def steps_to_collapse(steps: Sequence[float], entropy: Sequence[float], fraction: float = 0.5) -> float:
    """The first step whose entropy is below `fraction` x the entropy at the first step; nan if none."""
    if len(entropy) == 0:
        return math.nan
    threshold = fraction * entropy[0]
    return next((float(s) for s, h in zip(steps, entropy) if h < threshold), math.nan)


def late_stage_drop(accuracy: Sequence[float]) -> float:
    """max(accuracy) - accuracy[-1] over a run's held-out evaluations in step order (>= 0)."""
    return float(max(accuracy) - accuracy[-1]) if len(accuracy) else math.nan


def band(curves: Sequence[tuple[Sequence[float], Sequence[float]]], confidence: float = 0.95
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, low, high) over seeds of curves given as (steps, values) each: at every step
    logged by at least one seed, the `t_interval` of the seeds that logged it."""
    by_step: dict[float, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps, values):
            by_step.setdefault(float(s), []).append(float(v))
    steps = np.array(sorted(by_step))
    intervals = [t_interval(by_step[s], confidence) for s in steps]
    return (steps, np.array([i.mean for i in intervals]), np.array([i.low for i in intervals]),
            np.array([i.high for i in intervals]))
