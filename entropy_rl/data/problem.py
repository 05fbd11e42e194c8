"""The unit of data: one problem with its ground-truth answer."""

from __future__ import annotations

import dataclasses
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
