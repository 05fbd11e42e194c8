"""Settings follow the data: a dataset file implies the math verifier, a math held-out set and
no warm start (unless set); `rank` and `train` build the same built-in problems under the same
ids, ids name the problem set, and a ranking of other problems is refused."""

import json
import shutil
from pathlib import Path

import pytest

from entropy_rl import ranking
from entropy_rl.configuration import config_from_dict as command_config_from_dict
from entropy_rl.data import synthetic_problems
from entropy_rl.data.curriculum import check_ranked_problem_set
from entropy_rl.train import data_setup
from entropy_rl.train.config import config_from_dict

DATASET = str(Path(__file__).resolve().parents[1] / "data" / "verifier_pairs.jsonl")  # any existing file


def _derived(config):
    return config.data.verifier, config.eval.benchmark, config.warmstart.enabled


def test_a_dataset_file_implies_math_settings():
    assert _derived(config_from_dict({"data": {"dataset": DATASET}})) == ("math", "math500", False)
    assert _derived(config_from_dict({})) == ("synthetic", "synthetic", True)


def test_settings_given_with_a_dataset_file_are_kept():
    given = {"data": {"dataset": DATASET, "verifier": "synthetic"}, "eval": {"benchmark": "aime24"},
             "warmstart": {"enabled": True}}
    assert _derived(config_from_dict(given)) == ("synthetic", "aime24", True)


def test_rank_with_a_dataset_file_uses_the_math_verifier():
    config = command_config_from_dict(ranking.RankCommandConfig,
                                      {"policy": "p", "output": "o", "data": {"dataset": DATASET}}, check_paths=False)
    assert config.settings().verifier == "math"


def test_settings_line_names_what_the_run_uses():
    line = data_setup.settings_line(config_from_dict({"data": {"dataset": DATASET}}), 7)
    assert line == (f"data: 7 problems from {DATASET}; verifier math; prompts plain; held-out math500 "
                    "(256 problems x 4); warm start off")
    assert "the built-in task (levels add1+add2)" in data_setup.settings_line(config_from_dict({}), 7)


def test_rank_and_train_build_the_same_problems_under_the_same_ids():
    train = config_from_dict({"data": {"num_synthetic_problems": 50}})
    rank = command_config_from_dict(ranking.RankCommandConfig,
                                    {"policy": "p", "output": "o", "data": {"num_synthetic_problems": 50}},
                                    check_paths=False)
    assert ranking.load_dataset(rank) == data_setup.training_problems(train)
    assert ranking.ranked_problem_set(rank) == data_setup.training_problem_set(train) == "synthetic-add1+add2-train-0"


def test_ids_name_the_problem_set():
    add1, add2 = (synthetic_problems(3, seed=0, levels=(level,)) for level in ("add1", "add2"))
    assert [p.id for p in add1] == [f"synthetic-add1-train-0-{i}" for i in range(3)]
    assert not {p.id for p in add1} & {p.id for p in add2}


def test_a_ranking_of_other_problems_is_refused(tmp_path):
    ranking_file = tmp_path / "ranking.jsonl"
    ranking_file.write_text("")
    meta = Path(f"{ranking_file}.meta.json")
    meta.write_text(json.dumps({"problem_set": "synthetic-add2+sub2-train-0"}))
    check_ranked_problem_set(ranking_file, "synthetic-add2+sub2-train-0")
    with pytest.raises(ValueError, match=r"'synthetic-add2\+sub2-train-0'.*'synthetic-add1\+add2-train-0'"):
        check_ranked_problem_set(ranking_file, "synthetic-add1+add2-train-0")
    meta.write_text(json.dumps({"problem_set": "/data/a.parquet"}))
    check_ranked_problem_set(ranking_file, "/data/b.parquet")  # two files: their ids decide
    with pytest.raises(ValueError, match="this run trains on"):
        check_ranked_problem_set(ranking_file, "synthetic-add1+add2-train-0")
    shutil.rmtree(tmp_path)
    check_ranked_problem_set(ranking_file, "anything")  # no meta file: nothing to check
