"""Every YAML in configs/ loads and validates, and each states what docs/algorithms.md says."""

from pathlib import Path

import pytest

from entropy_rl.train.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = sorted(CONFIGS.glob("*.yaml"))
PAPER = sorted(p for p in (CONFIGS / "paper").glob("*.yaml") if not p.stem.endswith("base"))
MESH = sorted((CONFIGS / "mesh").glob("*.yaml"))
METHODS = {"grpo", "dapo", "justrl", "stapo", "sent", "kl_cov", "clip_cov", "entropy20", "entropy_bonus", "drgrpo"}


def test_every_method_has_a_tiny_config():
    assert {p.stem for p in TINY} == METHODS


@pytest.mark.parametrize("path", TINY, ids=lambda p: p.stem)
def test_tiny_configs_are_valid_on_this_machine(path):
    config = load_config(path)  # paths checked too: they need nothing but the package
    assert config.model.hf_path is None and config.data.dataset == "synthetic"
    assert config.run_dir == f"runs/{path.stem}-tiny"


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
@pytest.mark.parametrize("mesh", MESH, ids=lambda p: p.stem)
def test_paper_configs_are_valid_with_every_mesh(path, mesh):
    config = load_config([path, mesh], check_paths=False)  # the model / data paths are the user's
    assert config.model.hf_path is not None and config.data.verifier == "math"
    assert config.optimizer.learning_rate == 1e-6 and config.rollout.n == 8 and config.data.batch_size == 256
    assert not config.warmstart.enabled
    assert config.mesh == load_config(mesh).mesh


def test_method_settings_follow_algorithms_md():
    tiny = {p.stem: load_config(p) for p in TINY}
    assert tiny["stapo"].algorithm == TrainConfig().algorithm  # the default run is STAPO
    loss = {name: c.algorithm.loss for name, c in tiny.items()}
    assert (loss["grpo"].clip_low, loss["grpo"].clip_high, loss["grpo"].loss_agg_mode) == (0.2, 0.2, "seq-mean-token-mean")
    assert (loss["dapo"].clip_high, loss["dapo"].loss_agg_mode) == (0.28, "token-mean")
    assert tiny["dapo"].algorithm.dynamic_sampling and loss["dapo"].ref_kl_coef == 0
    assert loss["justrl"].dual_clip_c == 10 and not tiny["justrl"].algorithm.dynamic_sampling
    assert tiny["drgrpo"].algorithm.advantage_estimator == "drgrpo"
    assert loss["drgrpo"].loss_agg_mode == "seq-mean-token-sum-norm"
    assert (loss["sent"].sent.beta, loss["sent"].ref_kl_coef, loss["sent"].ref_kl_kind) == (0.1, 0.001, "k3")
    assert tiny["entropy20"].algorithm.name == "entropy_topk" and loss["entropy20"].entropy_topk.top_ratio == 0.2
    assert loss["entropy_bonus"].entropy_coef == 0.001
    assert tiny["kl_cov"].algorithm.name == "kl_cov" and tiny["clip_cov"].algorithm.name == "clip_cov"


def test_stapo_paper_settings():
    for size, micro in (("1.7b", 64), ("8b", 32), ("14b", 16)):
        config = load_config(CONFIGS / "paper" / f"stapo_qwen3_{size}.yaml", check_paths=False)
        a = config.algorithm
        assert a.name == "stapo" and a.mini_batch_size == 64 and a.micro_batch_size == micro
        assert (a.loss.clip_low, a.loss.clip_high, a.loss.ref_kl_coef) == (0.2, 0.28, 0.0)
        assert (a.loss.stapo.prob_threshold, a.loss.stapo.entropy_quantile) == (0.002, 0.8)
        assert config.optimizer.warmup_steps == 10 and config.rollout.max_new_tokens == 15360
        assert size.upper() in config.model.hf_path


def test_sent_paper_settings():
    config = load_config(CONFIGS / "paper" / "sent_r1_distill_qwen_1.5b.yaml", check_paths=False)
    assert config.algorithm.name == "sent" and config.algorithm.mini_batch_size == 128
    assert config.rollout.max_new_tokens == 2048 and config.rollout.temperature == 1.0
    c = config.data.curriculum
    assert c.ranking_file is not None and (c.num_stages, c.epochs_per_stage) == (2, 5)
