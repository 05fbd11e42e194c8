"""group_advantages against per-group numpy loops; zero_variance_groups."""

import numpy as np
import pytest

from entropy_rl.losses import group_advantages, zero_variance_groups


def numpy_advantages(rewards, estimator, eps=1e-6):
    out = np.zeros_like(rewards, dtype=np.float64)
    for g, group in enumerate(rewards.astype(np.float64)):
        for i, reward in enumerate(group):
            others = np.delete(group, i)
            out[g, i] = {
                "grpo": (reward - group.mean()) / (group.std(ddof=1) + eps),
                "drgrpo": reward - group.mean(),
                "rloo": reward - others.mean(),
            }[estimator]
    return out


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_matches_numpy(estimator):
    rewards = np.random.default_rng(0).random((5, 8)).astype(np.float32)
    rewards[1] = 1.0  # zero-variance group -> all zeros
    got = group_advantages(rewards, estimator=estimator)
    np.testing.assert_allclose(got, numpy_advantages(rewards, estimator), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)


def test_hand_computed_binary_rewards():
    rewards = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)  # mean 0.25, std (ddof=1) 0.5
    np.testing.assert_allclose(group_advantages(rewards), [[1.5, -0.5, -0.5, -0.5]], rtol=1e-5)
    np.testing.assert_allclose(
        group_advantages(rewards, estimator="rloo"), [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6
    )


def test_zero_variance_groups():
    rewards = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0]], np.float32)
    np.testing.assert_array_equal(zero_variance_groups(rewards), [True, False, True])


def test_bad_input():
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        group_advantages(np.ones((2, 3)), estimator="ppo")
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(np.ones((2, 1)))
    with pytest.raises(AssertionError):
        group_advantages(np.ones(4))
