"""Config tree: defaults, YAML with bases, `key.sub=value` overrides, validation messages."""

import dataclasses

import pydantic
import pytest
import yaml

from entropy_rl.train import config as cfg
from entropy_rl.train.config import ConfigError, TrainConfig, load_config


def test_defaults_are_the_stapo_tiny_main_job_and_valid():
    config = load_config()
    assert config == TrainConfig()
    assert config.algorithm.name == "stapo"
    assert config.data.dataset == "synthetic"
    assert config.model.hf_path is None and config.model.tokenizer is None  # -> the built-in tokenizer
    # DAPO clip-higher under STAPO (docs/algorithms.md)
    assert (config.algorithm.loss.clip_low, config.algorithm.loss.clip_high) == (0.2, 0.28)
    cfg.validate_config(config)


def test_config_is_frozen():
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        TrainConfig().optimizer.learning_rate = 1.0
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        TrainConfig().algorithm.loss.stapo.prob_threshold = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):  # the loss library's own frozen dataclass
        TrainConfig().algorithm.policy_loss().clip_low = 1.0


def test_yaml_round_trip_is_exact(tmp_path):
    config = load_config(overrides=[
        "seed=7", "algorithm.name=sent", "algorithm.loss.dual_clip_c=none", "data.synthetic_levels=2,3",
        "optimizer.learning_rate=3e-6", "model.remat=true", "algorithm.micro_batch_size=32",
    ])
    path = tmp_path / "config.yaml"
    cfg.save_config(config, path)
    assert load_config(path) == config
    assert cfg.config_from_dict(yaml.safe_load(path.read_text())) == config


def test_overrides_coerce_to_field_types():
    config = load_config(overrides=[
        "total_steps=12", "optimizer.learning_rate=1e-6", "optimizer.grad_clip_norm=null",
        "logging.tensorboard=false", "model.tie_word_embeddings=0", "data.synthetic_levels=[1, 4]",
        "algorithm.loss.horizon=64", "rollout.temperature=1", "eval.benchmark=math500", "run_dir=/tmp/x y",
    ])
    assert config.total_steps == 12 and isinstance(config.total_steps, int)
    assert config.optimizer.learning_rate == 1e-6 and isinstance(config.optimizer.learning_rate, float)
    assert config.optimizer.grad_clip_norm is None
    assert config.logging.tensorboard is False and config.model.tie_word_embeddings is False
    assert config.data.synthetic_levels == (1, 4)
    assert config.algorithm.loss.horizon == 64
    assert config.rollout.temperature == 1.0 and isinstance(config.rollout.temperature, float)
    assert config.eval.benchmark == "math500" and config.run_dir == "/tmp/x y"


def test_partial_nested_override_keeps_sibling_defaults():
    # algorithm.loss defaults differ from PolicyLossConfig's (clip_high 0.28): touching one field keeps the rest
    config = load_config(overrides=["algorithm.loss.clip_low=0.1"])
    assert config.algorithm.loss.clip_low == 0.1 and config.algorithm.loss.clip_high == 0.28


def test_yaml_defaults_base_then_file_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\noptimizer: {learning_rate: 1e-5, warmup_steps: 3}\n")
    (tmp_path / "run.yaml").write_text("defaults: [base]\noptimizer:\n  learning_rate: 2e-5\n")
    config = load_config(tmp_path / "run.yaml", ["seed=5"])
    assert config.seed == 5
    assert config.optimizer.learning_rate == 2e-5 and config.optimizer.warmup_steps == 3


def test_defaults_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults: b.yaml\n")
    (tmp_path / "b.yaml").write_text("defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("override, expected", [
    ("algorithm.nmae=stapo", "did you mean 'algorithm.name'"),
    ("optimizer.lr=1e-5", "did you mean 'optimizer.learning_rate'"),
    ("optimzer.learning_rate=1e-5", "did you mean 'optimizer'"),
    ("algorithm.clip_high=0.28", "did you mean 'algorithm.loss.clip_high'"),
    ("rollout.max_new_token=8", "did you mean 'rollout.max_new_tokens'"),
    ("model.zzz=1", "the keys in model are: hf_path"),
])
def test_unknown_key_names_the_closest_valid_one(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert "unknown key" in str(info.value) and expected in str(info.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm:\n  loss:\n    clip_hihg: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "algorithm.loss.clip_hihg" in message and "'algorithm.loss.clip_high'" in message


@pytest.mark.parametrize("override, expected", [
    ("optimizer.learning_rate=-1e-6", "optimizer.learning_rate: must be > 0"),
    ("algorithm.name=stappo", "algorithm.name: 'stappo' is not one of ppo_clip, stapo"),
    ("algorithm.name=stappo", "did you mean 'stapo'"),
    ("algorithm.advantage_estimator=gae", "algorithm.advantage_estimator: 'gae' is not one of grpo, drgrpo, rloo"),
    ("data.batch_size=16 algorithm.mini_batch_size=5", "algorithm.mini_batch_size: 5 prompts does not divide data.batch_size=16"),
    ("algorithm.mini_batch_size=16 rollout.n=8 algorithm.micro_batch_size=7",
     "algorithm.micro_batch_size: 7 responses does not divide a mini-batch of 128"),
    ("optimizer.schedule=linear", "optimizer.schedule: 'linear' is not one of constant, cosine"),
    ("algorithm.loss.loss_agg_mode=token_mean", "algorithm.loss.loss_agg_mode: loss_agg_mode='token_mean' is not one of"),
    ("rollout.top_p=1.5", "rollout.top_p: must be in (0, 1]"),
    ("total_steps=abc", "total_steps: expected an integer, got 'abc'"),
    ("total_steps=1.5", "total_steps: expected an integer"),
    ("logging.wandb=maybe", "logging.wandb: expected true/false"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate: expected a number"),
    ("model.num_attention_heads=4 model.num_key_value_heads=3",
     "model.num_attention_heads: num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
    ("model.hf_path=/nonexistent/qwen", "model.hf_path: '/nonexistent/qwen' is not a directory"),
    ("model.attention_block_size=0", "model.attention_block_size: must be a positive int, got 0"),
    ("data.dataset=/nonexistent.jsonl", "data.dataset: '/nonexistent.jsonl' is neither 'synthetic'"),
    ("mesh.fsdp=0", "mesh: mesh sizes must be positive or one -1"),
    ("rollout.n=1", "rollout.n: the grpo advantage needs at least 2 samples"),
    ("eval.benchmark=aime", "did you mean 'aime2"),
    ("optimizer.learning_rate", "must look like key.sub=value"),
])
def test_bad_values_say_which_key_and_why(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=override.split(" "))
    assert expected in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optimizer.learning_rate=-1", "rollout.n=0", "algorithm.nmae=x"])
    message = str(info.value)
    assert "algorithm.nmae" in message
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["optimizer.learning_rate=-1", "rollout.n=0"])
    assert "optimizer.learning_rate" in str(info.value) and "rollout.n" in str(info.value)


def test_replace_with_dotted_keys():
    config = cfg.replace(TrainConfig(), **{"optimizer.learning_rate": 0.5, "algorithm.loss.clip_low": 0.1, "seed": 3})
    assert config.optimizer.learning_rate == 0.5 and config.algorithm.loss.clip_low == 0.1 and config.seed == 3
    assert config.algorithm.loss.clip_high == 0.28


def test_batches_must_split_over_the_data_parallel_devices():
    config = load_config(overrides=["data.batch_size=2", "algorithm.mini_batch_size=1", "rollout.n=2"])
    cfg.validate_for_devices(config, 2)  # 4 and 2 responses over 2 devices
    with pytest.raises(ConfigError) as info:
        cfg.validate_for_devices(config, 8)
    message = str(info.value)
    assert "data.batch_size x rollout.n = 4 responses does not split over mesh.data x mesh.fsdp = 8" in message
    assert "algorithm.mini_batch_size x rollout.n = 2 responses" in message
    cfg.validate_for_devices(cfg.replace(config, **{"mesh.fsdp": 1, "mesh.tensor": -1}), 8)  # tensor-parallel only
    with pytest.raises(ConfigError, match="mesh: .* needs 4 devices, 8 are available"):
        cfg.validate_for_devices(cfg.replace(config, **{"mesh.fsdp": 2, "mesh.data": 2}), 8)


def test_package_exports_resolve_lazily():
    import entropy_rl.train as package
    from entropy_rl.train import checkpoint, metrics

    assert package.load_config is load_config and package.Checkpointer is checkpoint.Checkpointer
    assert package.MetricsLogger is metrics.MetricsLogger and callable(package.train)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        package.trian  # noqa: B018


def test_config_diff_lists_changed_keys():
    old = TrainConfig()
    new = cfg.replace(old, **{"optimizer.learning_rate": 5e-5, "algorithm.loss.clip_high": 0.3})
    assert cfg.config_diff(old, new) == [f"algorithm.loss.clip_high: {old.algorithm.loss.clip_high!r} -> 0.3",
                                         f"optimizer.learning_rate: {old.optimizer.learning_rate!r} -> 5e-05"]
    assert cfg.config_diff(old, old) == []
