"""The statistics of `entropy-rl compare` against scipy.stats and hand-derived values."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from entropy_rl.sweep import stats


@pytest.mark.parametrize("n", [2, 3, 7])
def test_t_interval_equals_scipy(n):
    x = np.random.default_rng(n).normal(0.3, 0.1, size=n)
    got = stats.t_interval(list(x))
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    assert got.n == n and got.mean == pytest.approx(x.mean(), abs=1e-15)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)


def test_t_interval_by_hand_and_edge_cases():
    # [1, 3]: mean 2, s = sqrt(2), t(0.975, 1) = 12.7062047...; half width 12.7062047 * sqrt(2) / sqrt(2)
    got = stats.t_interval([1.0, 3.0])
    assert (got.low, got.high) == pytest.approx((2 - 12.706204736, 2 + 12.706204736), rel=1e-9)
    one = stats.t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high)
    assert stats.t_interval([1.0, float("nan"), 3.0]) == got  # a seed without the quantity is left out
    assert stats.t_interval([]).n == 0


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_t_test_equals_scipy(n):
    rng = np.random.default_rng(10 + n)
    a, b = rng.normal(0.1, 0.05, n), rng.normal(0.0, 0.05, n)
    got = stats.paired_t_test(list(a), list(b))
    want = scipy_stats.ttest_rel(a, b)
    assert got.n == n and got.mean_difference == pytest.approx((a - b).mean(), abs=1e-15)
    assert (got.t, got.p) == pytest.approx((want.statistic, want.pvalue), rel=1e-10)


def test_paired_t_test_without_variance_or_pairs():
    same = stats.paired_t_test([0.5, 0.75], [0.25, 0.5])  # every difference 0.25: nothing to test against
    assert same.mean_difference == 0.25 and math.isnan(same.t) and math.isnan(same.p)
    assert math.isnan(stats.paired_t_test([0.2], [0.1]).p)
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_t_test([0.1, 0.2], [0.1])


def test_collapse_and_late_drop():
    assert stats.steps_to_collapse([1, 2, 3, 4], [1.0, 0.6, 0.49, 0.2]) == 3
    assert stats.steps_to_collapse([1, 2, 3, 4], [1.0, 0.6, 0.49, 0.2], fraction=0.3) == 4
    assert math.isnan(stats.steps_to_collapse([1, 2], [1.0, 0.9]))
    assert stats.late_stage_drop([0.2, 0.5, 0.4]) == pytest.approx(0.1)
    assert stats.late_stage_drop([0.2, 0.3]) == 0


def test_band_over_seeds_of_unequal_lengths():
    steps, mean, low, high = stats.band([([0, 1, 2], [1.0, 2.0, 3.0]), ([0, 1], [3.0, 4.0])])
    assert list(steps) == [0, 1, 2] and list(mean) == [2.0, 3.0, 3.0]
    half = scipy_stats.t.ppf(0.975, 1) * math.sqrt(2) / math.sqrt(2)
    assert low[0] == pytest.approx(2 - half) and high[1] == pytest.approx(3 + half)
    assert math.isnan(low[2])  # one seed logged step 2
