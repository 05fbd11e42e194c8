"""Host-side prompt batches, deterministic in (seed, epoch) and resumable exactly."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from entropy_rl.data.problem import Problem


def problems_fingerprint(problems: Sequence[Problem]) -> str:
    """A short hash of the problem ids in order: a resumed run must see the same data."""
    digest = hashlib.sha256("\n".join(p.id for p in problems).encode())
    return digest.hexdigest()[:16]


class PromptIterator:
    """Endless batches of `batch_size` problems.

    Epoch e visits every problem once, in the order `default_rng([seed, e]).permutation(N)`
    (or file order with `shuffle=False`); a batch that crosses the end of an epoch continues
    with the next epoch's order. `state_dict()` = {seed, epoch, position, num_problems,
    fingerprint} (JSON-able); `load_state_dict` restores it, so the batches that follow are
    exactly those an uninterrupted run would have produced.
    """

    def __init__(self, problems: Sequence[Problem], batch_size: int, *, seed: int, shuffle: bool = True):
        if not problems:
            raise ValueError("PromptIterator needs at least one problem")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.problems = list(problems)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0  # index into the current epoch's order
        self._fingerprint = problems_fingerprint(self.problems)
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.problems))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.problems))

    def next_batch(self) -> list[Problem]:
        """The next `batch_size` problems."""
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self.problems):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self.problems[self._order[self.position]])
            self.position += 1
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> list[Problem]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The position, JSON-able."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "num_problems": len(self.problems),
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state`; ValueError if it was saved over other problems."""
        if state["num_problems"] != len(self.problems) or state.get("fingerprint", self._fingerprint) != self._fingerprint:
            raise ValueError(
                f"iterator state is for {state['num_problems']} other problems "
                f"(fingerprint {state.get('fingerprint')}), not these {len(self.problems)} ({self._fingerprint})"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
