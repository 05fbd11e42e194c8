"""The exact verifier of the built-in synthetic task: integer answers compared as integers."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from entropy_rl.rewards.extract import extract_boxed, parse_integer
from entropy_rl.rewards.registry import RewardResult, register_verifier


@register_verifier("synthetic")
def synthetic_rewards(responses: Sequence[str], ground_truths: Sequence[str]) -> RewardResult:
    """Rewards [N] float32: 1.0 exactly when the last boxed answer of `responses[i]` is an
    integer equal to `int(ground_truths[i])`. No sympy, no workers, never an error."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    rewards = [
        float(parse_integer(extract_boxed(response)) == int(truth)) for response, truth in zip(responses, ground_truths)
    ]
    return RewardResult(np.asarray(rewards, np.float32))
