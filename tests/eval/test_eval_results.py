"""The resumable per-problem results file."""

import json

import pytest

from entropy_rl.eval.results import append_results, read_jsonl, results_by_benchmark


def test_append_read_and_repair_half_written_line(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    assert read_jsonl(path) == []
    rows = [{"benchmark": "b", "id": str(i), "correct": [1, 0]} for i in range(3)]
    append_results(path, rows[:2])
    with path.open("a") as f:  # the process died while writing the third row
        f.write(json.dumps(rows[2])[:10])
    assert read_jsonl(path) == rows[:2]
    append_results(path, rows[2:])
    assert read_jsonl(path) == rows
    assert results_by_benchmark(read_jsonl(path))["b"]["1"] == rows[1]


def test_complete_last_row_without_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"benchmark": "b", "id": "0"}))
    append_results(path, [{"benchmark": "b", "id": "1"}])
    assert [r["id"] for r in read_jsonl(path)] == ["0", "1"]


def test_corrupt_middle_row_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"benchmark": "b", "id": "0"}\n{oops\n{"benchmark": "b", "id": "1"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        read_jsonl(path)
