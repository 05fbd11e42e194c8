"""The exact verifier of the built-in synthetic task: integer answers compared as integers."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from entropy_rl.rewards.extract import extract_boxed, parse_integer
from entropy_rl.rewards.registry import RewardResult, register_verifier


@register_verifier("synthetic")
def synthetic_rewards(
    responses: Sequence[str], ground_truths: Sequence[str], *, timeout_s: float | None = None
) -> RewardResult:
    """Rewards [N] float32: 1.0 exactly when the last boxed answer of `responses[i]` is an
    integer (ASCII digits, optional sign) equal to the integer `ground_truths[i]`.

    No sympy, no workers, so `timeout_s` is accepted for the common verifier signature and
    unused. A ground truth that is not an integer gives 0.0 and counts as an error.
    """
    return integer_rewards(responses, ground_truths, lambda response: parse_integer(extract_boxed(response)))


def integer_rewards(responses: Sequence[str], ground_truths: Sequence[str],
                    answer_of: Callable[[str], int | None]) -> RewardResult:
    """Rewards [N] float32: 1.0 exactly when `answer_of(responses[i])` equals the integer
    `ground_truths[i]`; a ground truth that is not an integer gives 0.0 and counts as an error."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    rewards = np.zeros(len(responses), np.float32)
    num_errors = 0
    for index, (response, truth) in enumerate(zip(responses, ground_truths)):
        expected = parse_integer(str(truth))
        if expected is None:
            num_errors += 1
            continue
        answer = answer_of(response)
        rewards[index] = float(answer is not None and answer == expected)
    return RewardResult(rewards, num_errors)
