"""Loading problems: every shipped benchmark, the layouts of the shared data (copies in
tests/data/shared_layouts), MATH and DAPO-Math-17k layouts, all file formats, bad rows."""

import json
import pathlib

import datasets
import pytest

from entropy_rl.data import BENCHMARK_FILES, BENCHMARKS, DataError, Problem, benchmark_path, load_benchmark, load_problems

LAYOUTS = pathlib.Path(__file__).parent / "shared_layouts"
SHIPPED_ROWS = {"aime24": 30, "aime25": 30, "amc23": 40, "amc83": 83, "math500": 500, "minerva_math": 272, "olympiadbench": 675}


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(BENCHMARK_FILES))
def test_every_shipped_benchmark_loads(name):
    problems = load_benchmark(name)
    rows = _rows(benchmark_path(name))
    assert len(problems) == len(rows) == SHIPPED_ROWS[BENCHMARK_FILES[name].removesuffix(".jsonl")]
    assert [(p.id, p.problem, p.answer, p.source) for p in problems] == [
        (r["id"], r["problem"], r["answer"], r["source"]) for r in rows
    ]
    assert len({p.id for p in problems}) == len(problems) and all(p.answer for p in problems)


def test_six_benchmarks_and_sources_file():
    assert BENCHMARKS == ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
    assets = pathlib.Path(benchmark_path("math500")).parent
    assert {p.name for p in assets.glob("*.jsonl")} == set(BENCHMARK_FILES.values())
    assert "Licence" in (assets / "SOURCES.md").read_text()
    with pytest.raises(KeyError, match="math500"):
        load_benchmark("gsm8k")


@pytest.mark.parametrize("path", sorted(LAYOUTS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_shared_layouts_load_with_no_options(path):
    problems = load_problems(path)
    rows = _rows(path)
    assert [Problem(r["id"], r["problem"], r["answer"], r["source"]) for r in rows] == problems
    assert problems.skipped == []


def test_math_layout_takes_the_boxed_answer_of_the_solution(tmp_path):
    rows = _rows(LAYOUTS / "math_train.jsonl")
    math_rows = [
        {"problem": r["problem"], "level": "Level 3", "type": "Algebra",
         "solution": f"We find $x = 1$, so the answer is $\\boxed{{{r['answer']}}}$."}
        for r in rows
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    problems = load_problems(path)
    assert [p.answer for p in problems] == [r["answer"] for r in rows]
    assert [p.id for p in problems] == [f"math-{i}" for i in range(1, len(rows) + 1)]
    assert problems[0].meta == {"level": "Level 3", "type": "Algebra", "solution": math_rows[0]["solution"]}
    assert problems[0].source == "math"


def _dapo_rows():
    rows = _rows(LAYOUTS / "aime_1983_2023.jsonl")
    return rows, [
        {"data_source": "math_dapo", "prompt": [{"role": "user", "content": r["problem"]}], "ability": "MATH",
         "reward_model": {"ground_truth": r["answer"], "style": "rule-lighteval/MATH_v2"},
         "extra_info": {"index": f"dapo-{i}"}}
        for i, r in enumerate(rows)
    ]


def test_dapo_math_17k_layout_parquet(tmp_path):
    rows, dapo = _dapo_rows()
    path = tmp_path / "dapo.parquet"
    datasets.Dataset.from_list(dapo).to_parquet(str(path))
    problems = load_problems(path)
    assert [(p.id, p.problem, p.answer, p.source) for p in problems] == [
        (f"dapo-{i}", r["problem"], r["answer"], "math_dapo") for i, r in enumerate(rows)
    ]
    assert problems[0].meta["ability"] == "MATH"


def test_saved_datasets_directory_and_split(tmp_path):
    rows = _rows(LAYOUTS / "olympiadbench.jsonl")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert [p.answer for p in load_problems(tmp_path / "single")] == [r["answer"] for r in rows]
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows[2:])})
    both.save_to_disk(str(tmp_path / "dict"))
    assert len(load_problems(tmp_path / "dict")) == 2
    assert len(load_problems(tmp_path / "dict", split="test")) == len(rows) - 2
    with pytest.raises(DataError, match="split"):
        load_problems(tmp_path / "dict", split="validation")


def test_json_variants_and_column_mapping(tmp_path):
    rows = [{"q": "What is 1+1?", "a": 2.0, "uid": "x1"}, {"q": "What is 2+2?", "a": 4, "uid": "x2"}]
    for name, content in [("list.json", rows), ("wrapped.json", {"data": rows}),
                          ("columns.json", {k: [r[k] for r in rows] for k in rows[0]})]:
        (tmp_path / name).write_text(json.dumps(content))
        problems = load_problems(tmp_path / name, problem_key="q", answer_key="a")
        assert [(p.problem, p.answer, p.meta) for p in problems] == [
            ("What is 1+1?", "2", {"uid": "x1"}), ("What is 2+2?", "4", {"uid": "x2"})
        ], name
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"question": "Q?", "meta": {"gt": ["7", "8"]}}) + "\n")
    assert load_problems(nested, answer_key="meta.gt")[0].answer == "7"


def _write_with_bad_rows(path: pathlib.Path) -> None:
    good = json.dumps({"problem": "1+1?", "answer": "2"})
    path.write_text("\n".join([good, json.dumps({"problem": "no answer"}), "{not json", json.dumps([1, 2]),
                               json.dumps({"problem": "empty", "answer": "  "}), good]) + "\n")


def test_bad_row_raises_naming_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_with_bad_rows(path)
    with pytest.raises(DataError, match=rf"{path}: row 2: no answer column"):
        load_problems(path)
    (tmp_path / "bad_json.jsonl").write_text('{"problem": "a", "answer": "1"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad_json.jsonl: row 2: invalid JSON"):
        load_problems(tmp_path / "bad_json.jsonl")


def test_skip_bad_rows_counts_them(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_with_bad_rows(path)
    problems = load_problems(path, on_bad_row="skip")
    assert [p.id for p in problems] == ["bad-1", "bad-6"]
    assert [entry.split(":")[0] for entry in problems.skipped] == ["row 2", "row 3", "row 4", "row 5"]


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "absent.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data file"):
        load_problems(tmp_path / "x.csv")
    (tmp_path / "x.json").write_text("{broken")
    with pytest.raises(DataError, match="x.json: not valid JSON"):
        load_problems(tmp_path / "x.json")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_problems(tmp_path / "x.json", on_bad_row="ignore")


def test_unreadable_files_name_file_and_row(tmp_path):
    good = json.dumps({"problem": "1+1?", "answer": "2"}).encode()
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(good + b"\n" + bytes(range(128, 256)) + b"\n" + good + b"\n")
    with pytest.raises(DataError, match=r"binary.jsonl: row 2: not UTF-8 text"):
        load_problems(binary)
    skipped = load_problems(binary, on_bad_row="skip")  # skip mode covers undecodable lines
    assert len(skipped) == 2 and skipped.skipped[0].startswith("row 2: not UTF-8 text")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe[]")
    with pytest.raises(DataError, match=r"binary.json: not UTF-8 text"):
        load_problems(tmp_path / "binary.json")
    for name, content in [("empty.jsonl", b""), ("blank.jsonl", b"\n \n"), ("empty.json", b"[]")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name}: no problems: no rows"):
            load_problems(tmp_path / name)
    bad = tmp_path / "all_bad.jsonl"
    bad.write_text(json.dumps({"problem": "no answer"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"all_bad.jsonl: no problems: all 2 rows are bad .*row 1: no answer column"):
        load_problems(bad, on_bad_row="skip")


def test_damaged_and_empty_parquet_name_the_file(tmp_path):
    path = tmp_path / "good.parquet"
    datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}] * 3).to_parquet(str(path))
    data = path.read_bytes()
    for name, content in [("zero.parquet", b""), ("truncated.parquet", data[: len(data) // 2]),
                          ("text.parquet", b"problem,answer\n1+1?,2\n")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=rf"{name}: not a readable parquet file"):
            load_problems(tmp_path / name)
    datasets.Dataset.from_list([{"problem": "1+1?", "answer": "2"}]).select([]).to_parquet(str(tmp_path / "no_rows.parquet"))
    with pytest.raises(DataError, match=r"no_rows.parquet: no problems: no rows"):
        load_problems(tmp_path / "no_rows.parquet")


def test_warm_start_targets_come_from_a_user_datasets_answers(tmp_path):
    from entropy_rl.data import synthetic_problems
    from entropy_rl.data.tokenizer import BuiltinTokenizer
    from entropy_rl.train.warmstart import target_batch

    tokenizer = BuiltinTokenizer()
    path = tmp_path / "user.jsonl"  # no `solution` column: the DAPO / plain question-answer layout
    path.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    batch = target_batch(load_problems(path), lambda p: tokenizer.encode(p.problem), tokenizer)
    targets = [tokenizer.decode(row[mask.astype(bool)]) for row, mask in zip(batch.tokens, batch.mask)]
    assert targets == [f"\\boxed{{{i + 1}}}<|im_end|>" for i in range(3)]
    synthetic = synthetic_problems(4, seed=0)  # the built-in task's targets are unchanged: its solution is the box
    batch = target_batch(synthetic, lambda p: tokenizer.encode(p.problem), tokenizer)
    assert [tokenizer.decode(row[m.astype(bool)]) for row, m in zip(batch.tokens, batch.mask)] == [
        p.meta["solution"] + "<|im_end|>" for p in synthetic]
