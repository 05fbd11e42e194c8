"""Per-problem evaluation results as a resumable jsonl file.

One JSON object per problem: {"benchmark", "id", "n", "num_correct", "correct" [n],
"answer", "response_lengths" [n], optionally "responses" [n]}. Rows are appended and flushed
batch by batch (`entropy_rl.jsonl`), so an interrupted evaluation keeps every finished batch;
a half-written last line (the process died mid-write) is ignored when reading and cut off
before the next append.
"""

from __future__ import annotations

from collections.abc import Iterable

from entropy_rl.jsonl import append_rows as append_results
from entropy_rl.jsonl import read_rows as read_jsonl

__all__ = ["append_results", "read_jsonl", "results_by_benchmark"]


def results_by_benchmark(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """{benchmark: {problem id: row}}; a later row for the same problem replaces an earlier one."""
    grouped: dict[str, dict[str, dict]] = {}
    for row in rows:
        grouped.setdefault(row["benchmark"], {})[str(row["id"])] = row
    return grouped
