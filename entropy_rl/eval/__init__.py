"""Evaluation: avg@k / unbiased pass@k on the math benchmarks and the built-in task, run plots.

`evaluate` (and the other runner names) are imported on first use, so the numpy-only
metrics and `entropy-rl plot` do not pay for importing jax and the sampler.
"""

from entropy_rl.eval.metrics import (
    DEFAULT_KS,
    average_metrics,
    avg_at_k,
    benchmark_metrics,
    flat_metrics,
    markdown_table,
    metric_ks,
    pass_at_k,
)
from entropy_rl.eval.results import append_results, read_jsonl, results_by_benchmark

_RUNNER_NAMES = ("evaluate", "benchmark_problems", "write_summary", "SYNTHETIC_BENCHMARK")


def __getattr__(name: str):
    if name in _RUNNER_NAMES:
        from entropy_rl.eval import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'entropy_rl.eval' has no attribute {name!r}")


__all__ = [
    "DEFAULT_KS",
    "append_results",
    "average_metrics",
    "avg_at_k",
    "benchmark_metrics",
    "flat_metrics",
    "markdown_table",
    "metric_ks",
    "pass_at_k",
    "read_jsonl",
    "results_by_benchmark",
    *_RUNNER_NAMES,
]
