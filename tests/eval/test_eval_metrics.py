"""avg@k / pass@k against brute force and hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from entropy_rl.eval import metrics


def brute_force_pass_at_k(correct: list[int], k: int) -> float:
    """Fraction of the k-subsets of the n samples that contain a correct one."""
    subsets = list(itertools.combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_subset_enumeration(n):
    for c in range(n + 1):
        correct = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(correct, k)
            np.testing.assert_allclose(metrics.pass_at_k(n, c, k), expected, rtol=1e-12, atol=1e-15)


def test_pass_at_k_vectorised_and_large_n_against_exact_fractions():
    n = np.array([10, 200, 1000, 4096])
    c = np.array([3, 1, 17, 100])
    k = 8
    got = metrics.pass_at_k(n, c, k)
    assert got.shape == (4,)
    exact = [1 - math.comb(int(ni - ci), k) / math.comb(int(ni), k) for ni, ci in zip(n, c)]
    np.testing.assert_allclose(got, exact, rtol=1e-12)
    # pass@1 is the plain accuracy c/n.
    np.testing.assert_allclose(metrics.pass_at_k(n, c, 1), c / n, rtol=1e-12)


@pytest.mark.parametrize(
    "n, c, k, message",
    [(4, 1, 5, "at least k"), (4, 5, 2, "num_correct"), (4, -1, 2, "num_correct"), (4, 1, 0, "positive"),
     (0, 0, 1, "at least one sample")],
)
def test_pass_at_k_rejects_bad_input(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        metrics.pass_at_k(n, c, k)


def test_avg_at_k_by_hand():
    correct = [[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]
    # first sample of each: 1, 0, 1
    assert metrics.avg_at_k(correct, 1) == pytest.approx(2 / 3)
    # first two: 1/2, 0, 1
    assert metrics.avg_at_k(correct, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    # all four: 3/4, 1/4, 1
    assert metrics.avg_at_k(correct, 4) == pytest.approx((0.75 + 0.25 + 1) / 3)
    with pytest.raises(ValueError, match="at least k"):
        metrics.avg_at_k(correct, 5)
    with pytest.raises(ValueError, match="empty"):
        metrics.avg_at_k([], 1)


def test_benchmark_metrics_and_average():
    correct = [[1, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    table = metrics.benchmark_metrics(correct, ks=(1, 2, 4, 8))
    assert table["num_problems"] == 3 and table["n"] == 4
    assert "avg@8" not in table and "pass@8" not in table
    assert table["accuracy"] == pytest.approx(4 / 12)
    assert table["avg@2"] == pytest.approx((0.5 + 0 + 0) / 3)
    # pass@2 per problem: 1 - C(1,2)/C(4,2) = 1, 1 - C(3,2)/C(4,2) = 1/2, 0
    assert table["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert table["pass@4"] == pytest.approx(2 / 3)

    other = metrics.benchmark_metrics([[1, 1], [0, 1]], ks=(1, 2, 4))
    average = metrics.average_metrics({"a": table, "b": other})
    assert average["num_problems"] == 5
    assert average["accuracy"] == pytest.approx((4 / 12 + 3 / 4) / 2)
    assert average["pass@2"] == pytest.approx((table["pass@2"] + 1.0) / 2)
    assert "pass@4" not in average  # b has n = 2: not averaged over a subset of benchmarks

    with pytest.raises(ValueError, match="same n"):
        metrics.benchmark_metrics([[1, 0], [1]])


def test_markdown_table_and_flat_metrics():
    a = metrics.benchmark_metrics([[1, 0, 1, 1]], ks=(1, 4))
    b = metrics.benchmark_metrics([[0, 0, 0, 1]], ks=(1, 4))
    summary = {"benchmarks": {"aime24": a, "math500": b}, "average": metrics.average_metrics({"aime24": a, "math500": b})}
    table = metrics.markdown_table(summary["benchmarks"], summary["average"])
    lines = table.strip().splitlines()
    assert lines[0] == "| benchmark | problems | n | accuracy | avg@1 | avg@4 | pass@1 | pass@4 |"
    assert lines[2] == "| aime24 | 1 | 4 | 75.00 | 100.00 | 75.00 | 75.00 | 100.00 |"
    assert lines[4].startswith("| average | 2 |  | 50.00 |")
    flat = metrics.flat_metrics(summary)
    assert flat["eval/aime24/avg@4"] == pytest.approx(0.75)
    assert flat["eval/average/pass@4"] == pytest.approx(1.0)
    assert "eval/aime24/n" not in flat
