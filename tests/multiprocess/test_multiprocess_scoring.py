"""`score_batch` on 2 processes x 4 CPU devices samples what 1 process samples: each host holds
a contiguous share of the problems (3 and 2 of 5), its rows are those rows of the one-process
batch (the same PRNG keys per row), and the gathered results equal the one-process ones."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import scoring_run  # noqa: E402

# one multi-process test at a time (`--dist loadgroup`): two would oversubscribe the cores
pytestmark = pytest.mark.xdist_group("processes")


@pytest.mark.slow
def test_two_hosts_score_their_shares_of_the_one_process_batch(launch, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    scoring_run.score(str(one))  # this process: 8 CPU devices, the same mesh shape
    launch([scoring_run.__file__, str(two)], timeout_s=240)

    whole = np.load(one / "host0.npz")
    assert whole["problems"].tolist() == [0, scoring_run.NUM_PROBLEMS]
    parts = [np.load(two / f"host{b}.npz") for b in (0, 1)]
    assert [p["problems"].tolist() for p in parts] == [[0, 3], [3, 5]]
    n = len(whole["tokens"]) // scoring_run.NUM_PROBLEMS
    for part in parts:
        rows = slice(part["problems"][0] * n, part["problems"][1] * n)
        np.testing.assert_array_equal(part["tokens"], whole["tokens"][rows])
        np.testing.assert_array_equal(part["lengths"], whole["lengths"][rows])
        np.testing.assert_allclose(part["logprobs"], whole["logprobs"][rows], atol=1e-5)
        np.testing.assert_array_equal(part["rewards"], whole["rewards"][rows])
    assert json.loads((two / "gathered.json").read_text()) == json.loads((one / "gathered.json").read_text())
