"""Problems from files: jsonl, json, parquet or a saved Hugging Face `datasets` directory, and
the benchmarks shipped in `entropy_rl/assets/benchmarks/`.

Column mapping (first present wins, dotted keys reach into nested objects):
  problem: `problem`, `question`, `prompt` (a chat list: the last user message's content,
           the DAPO-Math-17k layout `prompt=[{"role": "user", "content": ...}]`, whose own
           "Answer:" instruction is stripped: see `entropy_rl.data.dapo`)
  answer:  `answer`, `ground_truth`, `reward_model.ground_truth` (DAPO-Math-17k),
           `final_answer` (a list: its first item), then `solution` (MATH layout: the content
           of the last `\\boxed{}` of the worked solution)
  id:      `id`, `unique_id`, `idx`, `extra_info.index`, else `<file stem>-<row>`
  source:  `source`, `data_source`, else the file stem
Every other column goes to `Problem.meta` (`solution` included).

A bad row (not an object, no problem text, no answer, an empty answer, invalid JSON, a line
that is not UTF-8 text) raises `DataError` naming the file and the row (1-based);
`on_bad_row="skip"` skips it instead, and the returned `ProblemList.skipped` lists every
skipped row and why. Nothing is dropped silently. A file that cannot be read at all (not
UTF-8 JSON, a damaged parquet file) or that gives no problem (empty, every row skipped) raises
`DataError` naming the file.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
from typing import Any, Iterator

from entropy_rl.data.dapo import strip_dapo_wrapper
from entropy_rl.data.problem import Problem
from entropy_rl.rewards.extract import extract_boxed

logger = logging.getLogger(__name__)

PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("answer", "ground_truth", "reward_model.ground_truth", "final_answer")
SOLUTION_KEYS = ("solution",)
ID_KEYS = ("id", "unique_id", "idx", "extra_info.index")
SOURCE_KEYS = ("source", "data_source")
BENCHMARK_FILES = {
    "aime24": "aime24.jsonl",
    "aime25": "aime25.jsonl",
    "amc23": "amc23.jsonl",
    "amc83": "amc83.jsonl",
    "math500": "math500.jsonl",
    "minerva": "minerva_math.jsonl",
    "minerva_math": "minerva_math.jsonl",
    "olympiadbench": "olympiadbench.jsonl",
}
BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")


class DataError(ValueError):
    """A data file or row that cannot be read; the message names the file and row."""


class ProblemList(list):
    """A list of Problems plus `skipped`: ["row N: reason", ...] rows left out by
    `on_bad_row="skip"` (empty otherwise)."""

    def __init__(self, problems=(), skipped=()):
        super().__init__(problems)
        self.skipped = list(skipped)


def _lookup(row: dict, key: str) -> Any:
    """`row[key]`, following dots into nested dicts; None when absent."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _first(row: dict, keys) -> tuple[str | None, Any]:
    for key in keys:
        value = _lookup(row, key)
        if value is not None:
            return key, value
    return None, None


def _problem_text(value: Any) -> str:
    """A problem column: a string, or a chat list whose last user message is the problem."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        user = [m.get("content") for m in value if m.get("role") == "user"]
        if user and isinstance(user[-1], str):
            return user[-1]
    raise ValueError(f"problem is neither a string nor a chat list with a user message: {str(value)[:80]!r}")


def _answer_text(value: Any) -> str:
    """A ground truth as a string: integer-valued floats lose their `.0`; lists give their first item."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("answer is an empty list")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"answer has unsupported type {type(value).__name__}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _problem_from_row(row: Any, row_number: int, stem: str, keys: dict[str, Any]) -> Problem:
    """One row -> Problem; ValueError with the reason for a bad row."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not an object")
    problem_key, problem_value = _first(row, [keys["problem"]] if keys["problem"] else PROBLEM_KEYS)
    if problem_key is None:
        raise ValueError(f"no problem column (looked for {keys['problem'] or PROBLEM_KEYS})")
    answer_key, answer_value = _first(row, [keys["answer"]] if keys["answer"] else ANSWER_KEYS)
    if answer_key is None:
        # MATH layout: the answer is the last box of the worked solution, which stays in meta.
        solution_key, solution = _first(row, [keys["solution"]] if keys["solution"] else SOLUTION_KEYS)
        answer_value = extract_boxed(solution) if isinstance(solution, str) else None
        if answer_value is None:
            raise ValueError(f"no answer column and no \\boxed{{}} answer in a solution column (looked for {ANSWER_KEYS + SOLUTION_KEYS})")
    answer = _answer_text(answer_value)
    if not answer:
        raise ValueError(f"empty answer in column {answer_key or solution_key!r}")
    id_key, id_value = _first(row, ID_KEYS)
    source_key, source = _first(row, SOURCE_KEYS)
    used = {problem_key, answer_key, id_key, source_key}
    meta = {key: value for key, value in row.items() if key not in used}
    return Problem(
        id=str(id_value) if id_key else f"{stem}-{row_number}",
        problem=strip_dapo_wrapper(_problem_text(problem_value))[0],
        answer=answer,
        source=str(source) if source_key else stem,
        meta=meta,
    )


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) per non-blank line; a line that is not UTF-8 text or not
    JSON gives a `_BadJson` (a bad row, skippable), never a bare decoding error."""
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield line_number, _BadJson(f"not UTF-8 text ({error.reason} at byte {error.start})")
                continue
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                yield line_number, _BadJson(f"invalid JSON: {error}")


class _BadJson:
    """Marker for a jsonl line that cannot be read (the message says why)."""

    def __init__(self, message: str):
        self.message = message


def _read_json(path: str) -> Iterator[tuple[int, Any]]:
    """A JSON list of rows, `{"data": [...]}`, or a dict of equal-length columns."""
    with open(path, "rb") as file:
        try:
            content = json.loads(file.read().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON: {error}") from error
    if isinstance(content, dict) and isinstance(content.get("data"), list):
        content = content["data"]
    elif isinstance(content, dict) and content and all(isinstance(v, list) for v in content.values()):
        columns = list(content)
        content = [dict(zip(columns, values)) for values in zip(*content.values())]
    if not isinstance(content, list):
        raise DataError(f"{path}: expected a list of rows, {{'data': [...]}} or a dict of columns")
    yield from enumerate(content, start=1)


def _read_table(path: str, split: str | None) -> Iterator[tuple[int, Any]]:
    """Parquet file or a `datasets.save_to_disk` directory (a DatasetDict needs `split`,
    unless it has one split or a "train" split)."""
    import datasets

    if os.path.isdir(path):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            names = list(dataset)
            chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
            if chosen not in names:
                raise DataError(f"{path}: choose a split with split=... among {names}")
            dataset = dataset[chosen]
    else:
        dataset = _read_parquet(path)
    yield from enumerate(dataset, start=1)


def _read_parquet(path: str):
    """A parquet file as a `datasets.Dataset`; DataError naming the file when it is not one
    (an empty file, a truncated or foreign one)."""
    import datasets
    import pyarrow.parquet

    try:
        if pyarrow.parquet.read_metadata(path).num_rows == 0:  # fails fast, with the reason, on a damaged file
            return []
        return datasets.Dataset.from_parquet(path)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as error:  # ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file ({type(error).__name__}: {str(error)[:200]})") from error


def _rows(path: str, split: str | None) -> Iterator[tuple[int, Any]]:
    if os.path.isdir(path) or path.endswith(".parquet"):
        return _read_table(path, split)
    if path.endswith(".jsonl"):
        return _read_jsonl(path)
    if path.endswith(".json"):
        return _read_json(path)
    raise DataError(f"{path}: unsupported data file (use .jsonl, .json, .parquet or a saved datasets directory)")


def load_problems(
    path: str | os.PathLike,
    *,
    problem_key: str | None = None,
    answer_key: str | None = None,
    solution_key: str | None = None,
    split: str | None = None,
    on_bad_row: str = "error",
) -> ProblemList:
    """Problems of a jsonl / json / parquet file or a saved `datasets` directory.

    `problem_key`, `answer_key`, `solution_key` name the columns when the defaults (module
    docstring) do not fit; dotted keys reach nested objects (`reward_model.ground_truth`).
    `on_bad_row`: "error" (default) raises DataError naming file and row; "skip" leaves the
    row out, logs a warning with the count, and records it in the result's `.skipped`.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no data file {path!r}")
    stem = os.path.basename(path.rstrip("/")).split(".")[0]
    keys = {"problem": problem_key, "answer": answer_key, "solution": solution_key}
    problems, skipped = [], []
    for row_number, row in _rows(path, split):
        try:
            if isinstance(row, _BadJson):
                raise ValueError(row.message)
            problems.append(_problem_from_row(row, row_number, stem, keys))
        except ValueError as error:
            if on_bad_row == "error":
                raise DataError(f"{path}: row {row_number}: {error}") from error
            skipped.append(f"row {row_number}: {error}")
    if not problems:
        reason = (f"all {len(skipped)} rows are bad and were skipped ({'; '.join(skipped[:3])})" if skipped
                  else "no rows (the file is empty)")
        raise DataError(f"{path}: no problems: {reason}")
    if skipped:
        logger.warning("%s: skipped %d bad rows (%s)", path, len(skipped), "; ".join(skipped[:5]))
    return ProblemList(problems, skipped)


def benchmark_path(name: str) -> str:
    """Path of a shipped benchmark file (`BENCHMARK_FILES` names)."""
    if name not in BENCHMARK_FILES:
        raise KeyError(f"unknown benchmark {name!r}; shipped: {sorted(BENCHMARK_FILES)}")
    return str(importlib.resources.files("entropy_rl") / "assets" / "benchmarks" / BENCHMARK_FILES[name])


def load_benchmark(name: str) -> list[Problem]:
    """A shipped evaluation set: aime24, aime25, amc23, math500, minerva, olympiadbench
    (also amc83 and the alias minerva_math). Provenance: assets/benchmarks/SOURCES.md."""
    return list(load_problems(benchmark_path(name)))
