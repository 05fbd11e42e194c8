"""Semantic-entropy curriculum (SENT): train on low-entropy prompts first, stage by stage.

A ranking file (jsonl, one row per problem: ``id``, ``semantic_entropy``, ``n_clusters``,
``accuracy``; written by ``entropy-rl rank``) orders the training set from low to high
semantic entropy. The sorted set is split into ``num_stages`` stages of equal size (the
entropy quantiles; ties keep the dataset order). Stage s is served for ``steps_per_stage``
batches, or ``ceil(epochs_per_stage * |stage| / batch_size)`` batches, as a stream of
per-epoch shuffles, deterministic in (seed, stage, epoch); no batch mixes two stages, so
every stage-1 item comes before any stage-2 item. The trainer keeps training the same
weights across stages: that is "each stage starts from the previous stage's weights".
After the last stage's budget the iterator keeps serving the last stage (``finished``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entropy_rl.data.iterator import problems_fingerprint
from entropy_rl.data.loading import DataError

RANKING_FIELDS = ("id", "semantic_entropy", "n_clusters", "accuracy")


def parse_ranking_line(line: str, *, path: str | Path, line_number: int) -> dict[str, Any]:
    """One ranking row from a jsonl line; a clear error names the file, line and field."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{line_number}: not a JSON object ({error.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
    missing = [field for field in ("id", "semantic_entropy") if field not in row]
    if missing:
        raise ValueError(f"{path}:{line_number}: missing field(s) {missing}")
    row["id"] = str(row["id"])
    return row


def check_ranked_problem_set(path: str | Path, problem_set: str) -> None:
    """Raise DataError naming both when the ranking's `<path>.meta.json` (written by `entropy-rl
    rank`) records another problem set than `problem_set` (the training data's: a built-in
    set's `problem_set_id`, or a dataset path) and either of them is built-in; no check
    without a meta file or for two dataset files (their ids decide)."""
    meta_path = Path(f"{path}.meta.json")
    if not meta_path.exists():
        return
    ranked = json.loads(meta_path.read_text()).get("problem_set")
    built_in = [name for name in (ranked, problem_set) if str(name).startswith("synthetic-")]
    if ranked is None or ranked == problem_set or not built_in:
        return
    raise DataError(f"{path} ranks the problems {ranked!r} (its .meta.json), but this run trains on {problem_set!r}: "
                     "rank the training problems (entropy-rl rank with the run's data.* settings and "
                     "--data-seed = the run's seed), or train on the ranked ones")


def read_ranking(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a jsonl ranking file, in file order (blank lines skipped)."""
    rows = []
    with open(path, encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            if line.strip():
                rows.append(parse_ranking_line(line, path=path, line_number=line_number))
    return rows


def split_into_stages(
    ids: Sequence[str], entropy_by_id: Mapping[str, float], num_stages: int
) -> list[list[int]]:
    """Indices into ``ids`` sorted by semantic entropy (stable) and cut into ``num_stages`` equal parts."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if len(ids) < num_stages:
        raise ValueError(f"cannot split {len(ids)} problems into {num_stages} stages")
    entropies = np.asarray([entropy_by_id[i] for i in ids], dtype=np.float64)
    order = np.argsort(entropies, kind="stable")
    return [part.tolist() for part in np.array_split(order, num_stages)]


class CurriculumIterator:
    """Batches of problems, stage by stage from low to high semantic entropy.

    Same interface as ``PromptIterator`` (``next_batch``, ``state_dict``, ``load_state_dict``)
    plus ``stage`` (stage of the last batch), ``stage_changed`` (the last batch opened a new
    stage after the first), ``finished``, ``total_steps`` and ``stages_summary()``.

    Args:
      problems: the training problems (``.id`` must match the ranking's ids).
      ranking: a ranking file path, or a mapping id -> semantic entropy.
      batch_size: problems per batch.
      seed: shuffling seed.
      num_stages: number of entropy quantile stages (SENT: 2).
      epochs_per_stage: passes over each stage (SENT: 5); ignored when ``steps_per_stage`` is set.
      steps_per_stage: batches per stage.
      on_missing: a problem without a ranking row: "error" (default) or "drop".
    """

    def __init__(
        self,
        problems: Sequence[Any],
        ranking: str | Path | Mapping[str, float],
        batch_size: int,
        *,
        seed: int,
        num_stages: int = 2,
        epochs_per_stage: float = 1.0,
        steps_per_stage: int | None = None,
        on_missing: str = "error",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if on_missing not in ("error", "drop"):
            raise ValueError(f"on_missing must be 'error' or 'drop', got {on_missing!r}")
        if isinstance(ranking, (str, Path)):
            entropy_by_id = {row["id"]: float(row["semantic_entropy"]) for row in read_ranking(ranking)}
        else:
            entropy_by_id = {str(key): float(value) for key, value in ranking.items()}
        unranked = [p.id for p in problems if str(p.id) not in entropy_by_id]
        if unranked and on_missing == "error":
            raise DataError(
                f"{len(unranked)} of {len(problems)} problems have no ranking row (e.g. {unranked[:5]}); "
                "rank them (`entropy-rl rank`) or leave them out (data.curriculum.on_missing=drop)"
            )
        self._problems = [p for p in problems if str(p.id) in entropy_by_id]
        ids = [str(p.id) for p in self._problems]
        self._stages = split_into_stages(ids, entropy_by_id, num_stages)
        # hash of the ids in curriculum order: same problems AND same ranking order
        self._fingerprint = problems_fingerprint([self._problems[i] for stage in self._stages for i in stage])
        self._stage_entropies = [[entropy_by_id[ids[i]] for i in stage] for stage in self._stages]
        self.batch_size = batch_size
        self.seed = seed
        if steps_per_stage is not None:
            if steps_per_stage < 1:
                raise ValueError(f"steps_per_stage must be >= 1, got {steps_per_stage}")
            self._stage_steps = [steps_per_stage] * num_stages
        else:
            if epochs_per_stage <= 0:
                raise ValueError(f"epochs_per_stage must be > 0, got {epochs_per_stage}")
            self._stage_steps = [math.ceil(epochs_per_stage * len(s) / batch_size) for s in self._stages]
        self._stage = 0
        self._offset = 0  # items of the current stage's stream already served
        self._stage_changed = False

    # -- public properties -------------------------------------------------------------------
    @property
    def stage(self) -> int:
        """Stage (0-based, low entropy first) of the most recent batch; 0 before the first."""
        return self._stage

    @property
    def stage_changed(self) -> bool:
        """True when the most recent batch is the first batch of a stage after the first."""
        return self._stage_changed

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    @property
    def total_steps(self) -> int:
        """Batches the whole curriculum takes (sum of the stage budgets)."""
        return sum(self._stage_steps)

    @property
    def finished(self) -> bool:
        """The last stage's budget is used up (further batches repeat the last stage)."""
        last = self.num_stages - 1
        return self._stage == last and self._offset >= self._stage_steps[last] * self.batch_size

    def stages_summary(self) -> list[dict[str, Any]]:
        """Per stage: size, entropy range and step budget (for logging)."""
        return [
            {"stage": s, "size": len(stage), "steps": steps, "min_entropy": min(ent), "max_entropy": max(ent)}
            for s, (stage, ent, steps) in enumerate(zip(self._stages, self._stage_entropies, self._stage_steps))
        ]

    # -- batches -----------------------------------------------------------------------------
    def _epoch_order(self, stage: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stage, epoch])
        return np.asarray(self._stages[stage])[rng.permutation(len(self._stages[stage]))]

    def next_batch(self) -> list[Any]:
        """The next ``batch_size`` problems; moves to the next stage once this one's budget is spent."""
        stage_done = self._offset >= self._stage_steps[self._stage] * self.batch_size
        self._stage_changed = stage_done and self._stage + 1 < self.num_stages
        if self._stage_changed:
            self._stage += 1
            self._offset = 0
        size = len(self._stages[self._stage])
        batch: list[Any] = []
        while len(batch) < self.batch_size:
            epoch, position = divmod(self._offset, size)
            take = self._epoch_order(self._stage, epoch)[position : position + self.batch_size - len(batch)]
            batch.extend(self._problems[i] for i in take)
            self._offset += len(take)
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> list[Any]:
        return self.next_batch()

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: stage, epoch and position within that epoch's shuffle."""
        epoch, position = divmod(self._offset, len(self._stages[self._stage]))
        return {
            "stage": self._stage,
            "epoch": epoch,
            "position": position,
            "stage_changed": self._stage_changed,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage_sizes": [len(s) for s in self._stages],
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict``; refuses one taken from a different curriculum."""
        expected = {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "stage_sizes": [len(s) for s in self._stages],
            "fingerprint": self._fingerprint,
        }
        found = {key: state.get(key) for key in expected}
        if found != expected:
            raise ValueError(f"curriculum state does not match this curriculum: state has {found}, expected {expected}")
        self._stage = int(state["stage"])
        self._offset = int(state["epoch"]) * len(self._stages[self._stage]) + int(state["position"])
        self._stage_changed = bool(state["stage_changed"])
