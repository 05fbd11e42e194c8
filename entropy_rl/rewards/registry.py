"""Reward results and the verifier registry: a task brings its own verifier by name.

A verifier is `(responses: Sequence[str], ground_truths: Sequence[str]) -> RewardResult`.
The built-in ones ("math", "synthetic") also take a keyword `timeout_s` (seconds per item).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """Rewards of a batch of responses.

    rewards: float32 [N], 1.0 for a verified answer, else 0.0.
    num_errors: items whose check raised, crashed its worker or was rejected (too long).
    num_timeouts: items whose check ran past its deadline (the reward is 0.0).
    """

    rewards: np.ndarray
    num_errors: int = 0
    num_timeouts: int = 0


Verifier = Callable[[Sequence[str], Sequence[str]], RewardResult]
_VERIFIERS: dict[str, Verifier] = {}


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator registering a verifier under `name` (a second registration replaces it)."""

    def register(verifier: Verifier) -> Verifier:
        _VERIFIERS[name] = verifier
        return verifier

    return register


def get_verifier(name: str) -> Verifier:
    """The verifier registered as `name`; a KeyError lists the known names."""
    if name not in _VERIFIERS:
        raise KeyError(f"unknown verifier {name!r}; registered: {sorted(_VERIFIERS)}")
    return _VERIFIERS[name]


def verifier_names() -> list[str]:
    """Names of the registered verifiers, sorted."""
    return sorted(_VERIFIERS)
