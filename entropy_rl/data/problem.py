"""The unit of data: one problem with its ground-truth answer."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """A problem and its verifiable answer.

    id: unique within its source. problem: the statement (LaTeX allowed). answer: the ground
    truth final answer (no `\\boxed`). source: dataset name. meta: anything else (level,
    subject, `solution` = a target response for supervised warm starts, ...), JSON-able.
    """

    id: str
    problem: str
    answer: str
    source: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


def deduplicate(problems: Iterable[Problem]) -> tuple[list[Problem], int]:
    """(the problems with repeats removed, how many were removed).

    Two problems repeat each other when their statements are equal up to whitespace (the
    published DAPO-Math-17k lists each problem about 100 times); the first one is kept, so
    the order of first appearances is preserved.
    """
    kept: dict[str, Problem] = {}
    total = 0
    for problem in problems:
        total += 1
        kept.setdefault(" ".join(problem.problem.split()), problem)
    return list(kept.values()), total - len(kept)
