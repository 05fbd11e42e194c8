"""`entropy-rl rank` as 2 processes x 4 CPU devices writes the merged --output (and its sorted
copy) equal row for row to the ranking of one process with 4 devices: whole batches are handed
out round-robin, so a problem's samples do not depend on the process count. The random tiny
policy never boxes an answer, so the entropies are likelihood-weighted (a float per problem
that any other sample would change)."""

import json
from pathlib import Path

import pytest

from tests.multiprocess.tiny_policy import save_tiny_policy

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")


COUNTING_CLI = str(Path(__file__).with_name("counting_cli.py"))  # counts the rows each process verifies


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), seed=1)


def _rank(policy, output, counts):
    """The data axis over a process's 4 devices: no weight is split, so no partial sums are
    added across devices (with fsdp the sampling view's MLP down projection is, and a
    process of a distributed run adds them through gloo in another order than one process:
    1 of 12 entropies differed in the 7th digit)."""
    counts.mkdir()
    return [COUNTING_CLI, str(counts), "rank", "--policy", policy, "--tokenizer", "builtin", "--data", "synthetic",
            "--num-synthetic", "12", "--output", str(output), "--samples", "4", "--batch-prompts", "4",
            "--max-new-tokens", "8", "--prompt-bucket", "32", "--response-bucket", "8", "--mesh", "4,1,1",
            "--weighting", "likelihood", "--no-progress"]


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _verified(directory, process):
    """Responses process `process` verified (tests/multiprocess/counting_cli.py)."""
    return sum(int(line) for line in open(Path(directory) / f"verified.{process}"))


@pytest.mark.slow
def test_two_processes_write_the_one_process_ranking(launch, tiny_policy, tmp_path):
    single, hosts = tmp_path / "single" / "ranking.jsonl", tmp_path / "hosts" / "ranking.jsonl"
    launch(_rank(tiny_policy, single, tmp_path / "single_counts"), num_processes=1)
    result = launch(_rank(tiny_policy, hosts, tmp_path / "hosts_counts"))
    expected = _rows(single)
    assert [row["id"] for row in expected] == [f"synthetic-add1+add2-train-0-{i}" for i in range(12)]
    # likelihood-weighted entropies: a float per problem that any other sample would change
    assert len({row["semantic_entropy"] for row in expected}) == 12
    assert _rows(hosts) == expected  # 3 batches: process 0 ranked batches 0 and 2, process 1 batch 1
    assert _rows(hosts.with_name("ranking.sorted.jsonl")) == _rows(single.with_name("ranking.sorted.jsonl"))
    assert not list(hosts.parent.glob("*.part-*"))
    # 3 batches of 4 prompts x 4 samples: each process verified only its own batches' rows
    assert _verified(tmp_path / "single_counts", 0) == 48
    assert [_verified(tmp_path / "hosts_counts", p) for p in (0, 1)] == [32, 16]
    assert sum("rank: 12 problems in the ranking" in line for lines in result.output for line in lines) == 1
