"""The study's command sequence (tools/study.sh): a warm start alone (total_steps=0) saves
checkpoint 0, `entropy-rl export` writes it as an HF checkpoint, and a run started from that
export (warm start off, builtin tokenizer) sees the same held-out "before" as the warm start
itself, so every method of a seed starts from the same weights and baseline."""

import jax
import numpy as np
import pytest
from flax import nnx

from entropy_rl import cli as top_cli
from entropy_rl.model import load_hf
from entropy_rl.policy import load_policy
from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train
from tests.train.test_resume import TINY_RUN

RUN = [arg for arg in TINY_RUN if not arg.startswith(("total_steps=", "warmstart."))] + [
    "data.synthetic_levels=[11]", "data.verifier=chains", "eval.num_problems=4", "eval.n=2"]


@pytest.mark.slow  # three tiny runs' compilations: ~105 s on the loaded 2-core machine
def test_warm_start_alone_exports_the_start_of_every_method(tmp_path):
    devices = jax.devices()[:1]
    warm = load_config(overrides=[*RUN, f"run_dir={tmp_path / 'warm'}", "total_steps=0", "warmstart.steps=3"])
    summary = train(warm, devices=devices)
    assert summary["checkpoint_steps"] == [0] and "none (no RL step)" in summary["table"]
    assert top_cli.main(["export", warm.run_dir, str(tmp_path / "hf")]) == 0
    warm_params = jax.tree.leaves(nnx.state(load_policy(warm.run_dir, step=0)[0], nnx.Param))
    exported = jax.tree.leaves(nnx.state(load_hf(str(tmp_path / "hf")), nnx.Param))
    assert len(warm_params) == len(exported)
    for saved, loaded in zip(warm_params, exported):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(loaded))  # exported as trained, bit for bit
    start = load_config(overrides=[*RUN, f"run_dir={tmp_path / 'grpo'}", "total_steps=0", "warmstart.enabled=false",
                                   f"model.hf_path={tmp_path / 'hf'}", "model.tokenizer=builtin"])
    method = train(start, devices=devices)
    assert method["accuracy_before"] == summary["accuracy_before"] == summary["accuracy_after"]
    assert method["accuracy_before_ci"] == summary["accuracy_before_ci"]
