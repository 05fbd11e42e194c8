"""Append-only, resumable jsonl files that a kill never leaves torn or empty.

One JSON object per line. Three operations, used by the run metrics (train/metrics.py), the
eval results (eval/results.py) and the semantic-entropy rankings (ranking.py):

- `read_rows`: every row; a half-written LAST line (the process died mid-append) is ignored,
  any other bad line is an error naming the file and line (or, for a run's own logs, set
  aside to `<file>.bad-lines` with a warning).
- `append_rows`: cuts such a half-written tail off, then appends whole rows and fsyncs them.
- `rewrite_rows`: replaces the whole file atomically (a temporary file in the same directory,
  fsynced, then `os.replace`), so a reader or a killed writer sees the old rows or the new
  ones, never a mix, an empty file or a torn line.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ParseLine = Callable[[str, int], dict[str, Any]]


def parse_json_object(line: str, line_number: int, *, path: str | os.PathLike = "") -> dict[str, Any]:
    """One row from a line; ValueError naming `path:line_number` when it is not a JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{line_number}: not a JSON row ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
    return row


def _complete_length(data: bytes) -> int:
    """Bytes of `data` up to its last complete row: a tail without a newline counts only when it parses."""
    tail_start = data.rfind(b"\n") + 1
    tail = data[tail_start:]
    if not tail.strip():
        return len(data)
    try:
        json.loads(tail)
    except ValueError:  # JSONDecodeError, or bytes cut inside a UTF-8 character
        return tail_start
    return len(data)


def read_rows(path: str | os.PathLike, parse_line: ParseLine | None = None, *,
              bad_lines: str = "raise") -> list[dict[str, Any]]:
    """All rows of a jsonl file ([] when it does not exist), skipping blank lines and a torn last line.

    parse_line(text, line_number) turns one line into a row (default: `parse_json_object`);
    its ValueError for a bad line other than the last one propagates with bad_lines="raise";
    "skip" skips them with a warning naming the first; "set_aside" also copies them to
    `<file>.bad-lines` (for a run's own logs, which the caller then rewrites without them).
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    parse = parse_line or (lambda line, number: parse_json_object(line, number, path=path))
    rows, bad = [], []
    for number, raw in enumerate(data[: _complete_length(data)].splitlines(), start=1):
        try:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not UTF-8 text ({err.reason})") from None
            if line.strip():
                rows.append(parse(line, number))
        except ValueError as err:
            if bad_lines == "raise":
                raise
            bad.append((raw, str(err)))
    if bad:
        aside = path.with_name(path.name + ".bad-lines")
        if bad_lines == "set_aside":
            with aside.open("ab") as f:
                f.write(b"".join(raw + b"\n" for raw, _ in bad))
        copied = f" and copied to {aside}" if bad_lines == "set_aside" else ""
        warnings.warn(f"{len(bad)} unreadable lines skipped{copied} (first: {bad[0][1]})", stacklevel=2)
    return rows


def _dump(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def append_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows (one write), then flush and fsync; a torn tail left by a killed writer is cut first
    and a complete last row without its newline gets one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        complete = _complete_length(data)
        if complete < len(data):
            with path.open("r+b") as f:
                f.truncate(complete)
        elif data and not data.endswith(b"\n"):
            with path.open("ab") as f:
                f.write(b"\n")
    with path.open("a", encoding="utf-8") as f:
        f.write(_dump(rows))
        f.flush()
        os.fsync(f.fileno())


def _umask() -> int:
    """The process's file mode creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace a file's text atomically: a temporary file in the same directory, fsynced, then `os.replace`.

    The file gets the mode a plain `open(path, "w")` gives it (0666 less the umask: 0644 under
    the usual 022), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def rewrite_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Replace the file's rows atomically (`write_text_atomic`): a kill leaves the old rows or the new ones."""
    write_text_atomic(path, _dump(rows))
