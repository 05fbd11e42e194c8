"""A two-step end-to-end run of every method config in configs/ on a tiny setup: the run
finishes, logs every metric the trainer promises, and they are finite. One device each (the
sharded step has its own test), except STAPO, the default, on all 8 simulated devices."""

import glob
import math
import os

import jax
import pytest

from entropy_rl.train.config import load_config
from entropy_rl.train.loop import train
from entropy_rl.train.metrics import read_metrics

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.yaml")))

TINY = [
    "total_steps=2", "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
    "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.head_dim=16",
    "data.num_synthetic_problems=64", "data.instruction=", "data.batch_size=2", "rollout.n=4",
    "rollout.max_new_tokens=6", "rollout.response_bucket=8", "algorithm.mini_batch_size=2",
    "algorithm.overlong_buffer_len=2", "warmstart.steps=0",
    "eval.num_problems=4", "checkpoint.async_save=false", "logging.tensorboard=false",
    "logging.progress_bar=false", "optimizer.warmup_steps=0",
]

PROMISED = [
    "reward/mean", "accuracy", "response_length/mean", "response_length/max", "response_length/truncated_fraction",
    "entropy/mean", "entropy/p10", "entropy/p50", "entropy/p90", "entropy/positive_adv", "entropy/negative_adv",
    "cov_logp_adv", "loss", "grad_norm", "lr", "loss/approx_kl", "loss/ratio", "semantic_entropy/mean", "reward/verifier_failures",
    "time/rollout", "time/update", "time/tokens_per_s",
]


def test_every_method_config_is_covered():
    names = {os.path.basename(path)[:-5] for path in CONFIGS}
    assert {"grpo", "dapo", "justrl", "stapo", "sent", "kl_cov", "clip_cov", "entropy20", "entropy_bonus"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p)[:-5])
def test_method_config_runs_two_steps(path, tmp_path):
    config = load_config(path, TINY + [f"run_dir={tmp_path}"])
    devices = None if config.algorithm.name == "stapo" else jax.devices()[:1]
    summary = train(config, devices=devices)
    rows = [row for row in read_metrics(tmp_path) if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        missing = [key for key in PROMISED if key not in row]
        assert not missing, missing
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        assert not bad, bad
        assert row["skipped"] == 0.0
        assert not [k for k in row if k.startswith("update/") or k == "loss/entropy"]  # entropy/mean only
    if config.algorithm.loss.ref_kl_coef > 0:
        assert all("loss/ref_kl" in row for row in rows)
    assert summary["checkpoint_steps"] == [2]
    final_eval = [row for row in read_metrics(tmp_path) if "eval/accuracy" in row][-1]
    assert final_eval["eval/synthetic/accuracy"] == pytest.approx(final_eval["eval/accuracy"])
    assert final_eval["eval/synthetic/pass@1"] == pytest.approx(final_eval["eval/accuracy"])
    assert final_eval["eval/accuracy"] <= final_eval["eval/synthetic/pass@4"] <= 1.0
    assert 0.0 <= summary["accuracy_after"] <= 1.0
