"""`entropy-rl train`: --print-config, overrides and config files, clear failures, and the
hand-off to the loop (a stand-in loop module records the config it is given)."""

import sys
import types
from pathlib import Path

import pytest
import yaml

from entropy_rl import cli as top_cli
from entropy_rl.train import cli
from entropy_rl.train.config import TrainConfig, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_print_config_prints_the_defaults_as_loadable_yaml(capsys):
    assert top_cli.main(["train", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert config_from_dict(yaml.safe_load(printed)) == TrainConfig()


def test_overrides_and_config_files_merge_in_order(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("seed: 1\noptimizer: {learning_rate: 1e-5}\n")
    (tmp_path / "b.yaml").write_text("seed: 2\n")
    argv = ["--config", str(tmp_path / "a.yaml"), "total_steps=3", "--config", str(tmp_path / "b.yaml"),
            "--print-config", "algorithm.name=sent"]  # options and overrides intermixed
    assert cli.main(argv) == 0
    config = config_from_dict(yaml.safe_load(capsys.readouterr().out))
    assert (config.seed, config.total_steps, config.algorithm.name) == (2, 3, "sent")
    assert config.optimizer.learning_rate == 1e-5


def test_bad_key_exits_nonzero_with_the_suggestion(capsys):
    assert top_cli.main(["train", "algorithm.nmae=stapo"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.nmae: unknown key (did you mean 'algorithm.name'?)" in err


def test_bad_value_and_missing_file_exit_nonzero(tmp_path, capsys):
    assert cli.main(["optimizer.learning_rate=-1", "algorithm.name=grpo"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.learning_rate: must be > 0" in err
    assert "algorithm.name: 'grpo' is not one of" in err
    assert cli.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_train_runs_the_loop_with_the_validated_config(monkeypatch, capsys, tmp_path):
    seen = []

    def train(config):
        seen.append(config)
        return {"accuracy_before": 0.25, "accuracy_after": 0.5, "run_dir": config.run_dir}

    monkeypatch.setitem(sys.modules, "entropy_rl.train.loop", types.SimpleNamespace(train=train))
    assert cli.main([f"run_dir={tmp_path}", "total_steps=2"]) == 0
    assert seen == [load_config(overrides=[f"run_dir={tmp_path}", "total_steps=2"])]
    out = capsys.readouterr().out
    assert "accuracy_after   0.5" in out and str(tmp_path) in out


def test_summary_table_from_the_loop_is_printed_as_is():
    assert cli.format_summary({"table": "| a | b |", "x": 1.0}) == "| a | b |"
    assert cli.format_summary({"a": 0.123456, "bb": "x"}) == "a   0.1235\nbb  x"


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0 and "key.sub=value" in capsys.readouterr().out


def test_print_config_of_a_paper_config_does_not_need_its_paths(capsys):
    paper, mesh = str(CONFIGS / "paper" / "stapo_qwen3_8b.yaml"), str(CONFIGS / "mesh" / "gpu8.yaml")
    assert cli.main(["--config", paper, "--config", mesh, "--print-config"]) == 0
    config = config_from_dict(yaml.safe_load(capsys.readouterr().out), check_paths=False)
    assert config.mesh.fsdp == 8 and config.model.hf_path.endswith("Qwen3-8B-Base")
    assert cli.main(["--config", paper]) == 2  # training needs them
    assert "model.hf_path: '/path/to/Qwen3-8B-Base' is not a directory" in capsys.readouterr().err


def test_a_batch_that_does_not_split_over_the_devices_fails_before_training(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "entropy_rl.train.loop", types.SimpleNamespace(train=None))  # never reached
    # the tests run on 8 simulated devices: 3 prompts x 2 responses cannot be split 8 ways
    assert cli.main(["data.batch_size=3", "algorithm.mini_batch_size=1", "rollout.n=2"]) == 2
    assert "does not split over mesh.data x mesh.fsdp = 8 devices" in capsys.readouterr().err
