"""Issue 20 item 1: eval results are keyed by what was evaluated. `eval --step 25` then `eval`
(latest = 30) with the default folder must not report step 25's numbers for step 30, and a
results folder of another checkpoint step is refused with the difference named."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropy_rl.eval import cli
from entropy_rl.policy import build_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config

SMALL_MODEL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
               "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16"]
ARGS = ["--benchmarks", "synthetic", "--max-problems", "4", "--n", "2", "--max-new-tokens", "4", "--batch-size", "8",
        "--mesh", "none", "--save-responses", "--no-progress"]


def _run_with_two_steps(tmp_path):
    """A run directory with checkpoints 25 and 30 of two different random policies (levels 3, 4).
    Weights are drawn with numpy into the abstract model (an eager init compiles for long)."""
    config = load_config(overrides=[f"run_dir={tmp_path / 'run'}", *SMALL_MODEL, "data.synthetic_levels=3,4", "seed=5"])
    _, shapes = nnx.split(build_policy(config.model, seed=0, abstract=True)[0])
    with ck.Checkpointer(config.run_dir, async_save=False) as saver:
        for step in (25, 30):
            rng = np.random.default_rng(step)
            params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
            saver.save(step, params=params, train_state={"step": jnp.int32(step)}, data_state={}, config=config)
    return config.run_dir


def _responses(folder):
    return [row["responses"] for row in map(json.loads, (folder / "results.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_eval_of_the_latest_step_never_reuses_another_steps_results(tmp_path, monkeypatch, capsys):
    run = _run_with_two_steps(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--checkpoint", run, "--step", "25", *ARGS]) == 0
    assert cli.main(["--checkpoint", run, *ARGS]) == 0  # the latest: 30
    step25, step30 = (tmp_path / "eval_results" / f"run-step{s}-float32-t1-p1-len4" for s in (25, 30))
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (step25, step30)]
    assert [s["step"] for s in summaries] == [25, 30]
    assert _responses(step25) != _responses(step30)  # step 30 was sampled from its own weights
    settings = json.loads((step30 / "results.settings.json").read_text())
    assert (settings["checkpoint"], settings["step"], settings["dtype"]) == (run, 30, "float32")
    assert (settings["synthetic_seed"], settings["synthetic_levels"]) == (5, ["sub2", "mul1"])  # the run's task

    # step 25 into step 30's folder: refused, with the difference named, nothing overwritten
    before = (step30 / "results.jsonl").read_bytes()
    assert cli.main(["--checkpoint", run, "--step", "25", "--output", str(step30), *ARGS]) == 1
    assert "step: recorded 30, now 25" in capsys.readouterr().err
    assert (step30 / "results.jsonl").read_bytes() == before


@pytest.mark.slow
def test_a_retrained_checkpoint_at_the_same_path_and_step_never_reuses_the_old_results(tmp_path, monkeypatch, capsys):
    """Issue 29 item 1: results are keyed by the weights' fingerprint, not only by path and step."""
    run = _run_with_two_steps(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--checkpoint", run, *ARGS]) == 0
    folder = tmp_path / "eval_results" / "run-step30-float32-t1-p1-len4"
    before = (folder / "results.jsonl").read_bytes()
    config = load_config(overrides=[f"run_dir={run}", *SMALL_MODEL, "data.synthetic_levels=3,4", "seed=5"])
    _, shapes = nnx.split(build_policy(config.model, seed=0, abstract=True)[0])
    rng = np.random.default_rng(99)  # the run retrained: step 30 again, other weights
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)
    ck.set_aside_previous_run(run)  # as resume=false does
    with ck.Checkpointer(run, async_save=False) as saver:
        saver.save(30, params=params, train_state={"step": jnp.int32(30)}, data_state={}, config=config)
    assert cli.main(["--checkpoint", run, *ARGS]) == 1
    assert "fingerprint: recorded" in capsys.readouterr().err
    assert (folder / "results.jsonl").read_bytes() == before
