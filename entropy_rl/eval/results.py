"""Per-problem evaluation results as a resumable jsonl file.

One JSON object per problem: {"benchmark", "id", "n", "num_correct", "correct" [n],
"answer", "response_lengths" [n], optionally "responses" [n]}. Rows are appended and flushed
batch by batch, so an interrupted evaluation keeps every finished batch; a half-written last
line (the process died mid-write) is ignored when reading and cut off before the next append.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def _repair_partial_last_line(path: Path) -> None:
    """Truncate `path` after its last newline when the text after it is not a JSON object."""
    data = path.read_bytes()
    tail_start = data.rfind(b"\n") + 1
    tail = data[tail_start:]
    if not tail.strip():
        return
    try:
        json.loads(tail)
    except json.JSONDecodeError:
        with path.open("r+b") as f:
            f.truncate(tail_start)
        return
    with path.open("ab") as f:  # a complete row that only lacks its newline
        f.write(b"\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All rows of a jsonl file (results or metrics); [] if it does not exist. A half-written last line is skipped.

    Raises:
      ValueError naming the file and line for a corrupt row that is not the last one.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if line_number == len(lines):
                break
            raise ValueError(f"{path}:{line_number}: not a JSON row ({err.msg})") from err
    return rows


def append_results(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to the jsonl file and flush them to disk (fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _repair_partial_last_line(path)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def results_by_benchmark(rows: Iterable[dict]) -> dict[str, dict[str, dict]]:
    """{benchmark: {problem id: row}}; a later row for the same problem replaces an earlier one."""
    grouped: dict[str, dict[str, dict]] = {}
    for row in rows:
        grouped.setdefault(row["benchmark"], {})[str(row["id"])] = row
    return grouped
