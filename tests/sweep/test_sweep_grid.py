"""`entropy-rl sweep` without training: the grid, its run names and commands, the manifest
(extended, or refused when a run would change), config errors before any run starts, and a
crashing run that does not stop the others."""

import json
from pathlib import Path

import pytest

from entropy_rl.sweep import runner
from entropy_rl.sweep.runner import RunSpec, Sweep, SweepError

REPO = Path(__file__).resolve().parents[2]


def test_grid_names_and_commands(tmp_path):
    grid = runner.parse_grid(["optimizer.learning_rate=1e-4,3e-4", "algorithm.loss.clip_high=0.28"])
    runs = runner.build_grid(tmp_path, ["grpo", "configs/stapo.yaml"], [0, 1], grid, [], ["total_steps=5"])
    assert [r.name for r in runs] == [
        f"{m}-learning_rate_{lr}-clip_high_0.28-seed{s}" for m in ("grpo", "stapo") for lr in ("1e-4", "3e-4")
        for s in (0, 1)]
    first = runs[0]
    assert (first.method, first.seed, first.settings) == (
        "grpo", 0, {"optimizer.learning_rate": "1e-4", "algorithm.loss.clip_high": "0.28"})
    assert first.command == ["train", "--config", str(REPO / "configs" / "grpo.yaml"), "total_steps=5",
                             "optimizer.learning_rate=1e-4", "algorithm.loss.clip_high=0.28", "seed=0",
                             f"run_dir={tmp_path / first.name}"]
    runner.validate_commands(runs)  # every one a valid config


@pytest.mark.parametrize("argv, message", [
    (["--methods", "gpro"], "--methods: 'gpro' is neither a file nor a name in configs, configs/study"),
    (["--methods", "grpo", "--set", "optimizer.learning_rate"], "--set 'optimizer.learning_rate': expected key.sub=value1"),
    (["--methods", "grpo", "optimizer.learning_rat=1"], "run grpo-seed0: invalid config"),
    (["--methods", "grpo", "--jobs", "0"], "--jobs must be >= 1"),
])
def test_bad_arguments_are_refused_before_any_run(tmp_path, capsys, argv, message):
    assert runner.main([str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_manifest_extends_and_refuses_a_changed_run(tmp_path):
    runs = runner.build_grid(tmp_path, ["grpo"], [0], {}, [], [])
    (tmp_path / runner.MANIFEST_FILE).write_text(json.dumps({"runs": runner.merge_manifest(tmp_path, runs)}))
    more = runner.build_grid(tmp_path, ["grpo", "stapo"], [0, 1], {}, [], [])
    assert [r["name"] for r in runner.merge_manifest(tmp_path, more)] == [
        "grpo-seed0", "grpo-seed1", "stapo-seed0", "stapo-seed1"]
    changed = runner.build_grid(tmp_path, ["grpo"], [0], {}, [], ["total_steps=7"])
    with pytest.raises(SweepError, match="records run grpo-seed0 with another command .*total_steps=7"):
        runner.merge_manifest(tmp_path, changed)


def test_a_failing_run_is_reported_and_the_next_one_still_runs(tmp_path, capsys, monkeypatch):
    # children that exit 2 at once (an unknown command of the entropy-rl CLI)
    monkeypatch.setattr(RunSpec, "command", property(lambda run: ["no-such-command"]))
    bad = [RunSpec(f"bad{i}", "bad", i, {}, [], []) for i in (0, 1)]
    assert Sweep(tmp_path, bad, jobs=1).run() == 1
    out = capsys.readouterr().out
    for i in (0, 1):
        assert f"[{i + 1}/2] bad{i}: started" in out
        assert f"[{i + 1}/2] bad{i}: FAILED (exit 2)" in out and str(tmp_path / f"bad{i}" / "train.log") in out
        assert "unknown command 'no-such-command'" in (tmp_path / f"bad{i}" / "train.log").read_text()
    assert "0 of 2 runs finished, failed: bad0, bad1" in out
