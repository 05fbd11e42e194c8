"""`entropy-rl eval` as 2 processes x 4 CPU devices (one fsdp=8 mesh over both) gives the
numbers of one process with 8 devices: the same rows in results.jsonl (responses included,
so every sample is compared) and the same summary.json, each process verifying only its
share of the rows; the table prints once."""

import json
from pathlib import Path

import pytest

from tests.multiprocess.tiny_policy import save_tiny_policy

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")


COUNTING_CLI = str(Path(__file__).with_name("counting_cli.py"))  # counts the rows each process verifies


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), seed=2)


def _eval(policy, output, counts):
    # 6 problems x 4 samples in chunks of 3 problems: each chunk splits 2 + 1 over the hosts
    counts.mkdir()
    return [COUNTING_CLI, str(counts), "eval", "--checkpoint", policy, "--tokenizer", "builtin", "--benchmarks",
            "synthetic", "--max-problems", "6", "--n", "4", "--batch-size", "12", "--max-new-tokens", "8",
            "--dtype", "float32", "--mesh", "auto", "--save-responses", "--no-progress", "--output", str(output)]


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _verified(directory, process):
    """Responses process `process` verified (tests/multiprocess/counting_cli.py)."""
    return sum(int(line) for line in open(Path(directory) / f"verified.{process}"))


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(launch, tiny_policy, tmp_path):
    launch(_eval(tiny_policy, tmp_path / "single", tmp_path / "single_counts"), num_processes=1, devices=8)
    result = launch(_eval(tiny_policy, tmp_path / "hosts", tmp_path / "hosts_counts"))
    expected = _rows(tmp_path / "single" / "results.jsonl")
    assert [row["id"] for row in expected] == [f"synthetic-add1+add2-test-0-{i}" for i in range(6)]
    assert len({response for row in expected for response in row["responses"]}) > 12  # varied samples
    assert _rows(tmp_path / "hosts" / "results.jsonl") == expected
    summaries = [json.loads((tmp_path / run / "summary.json").read_text()) for run in ("single", "hosts")]
    for summary in summaries:
        summary.pop("checkpoint")
    assert summaries[0] == summaries[1]
    # each process verified only its share of each chunk: 2 + 1 problems x 4 samples, twice
    assert _verified(tmp_path / "single_counts", 0) == 24
    assert [_verified(tmp_path / "hosts_counts", p) for p in (0, 1)] == [16, 8]
    assert sum(line.startswith("results: ") for lines in result.output for line in lines) == 1
