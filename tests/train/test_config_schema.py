"""The pydantic schema: sections derived from the classes that own their fields and checks, and
the config-time checks that used to fail only at run time (issue 20 item 10)."""

import dataclasses

import pydantic
import pytest

from entropy_rl import config as shared
from entropy_rl import configuration
from entropy_rl.losses import PolicyLossConfig
from entropy_rl.model import QwenConfig
from entropy_rl.rollout import SamplingConfig
from entropy_rl.train.config import ConfigError, load_config


def _error(*overrides, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides, **kwargs)
    return str(info.value)


def test_model_and_rollout_sections_are_the_owner_classes_fields():
    model_fields, rollout_fields = set(shared.ModelConfig.model_fields), set(shared.RolloutConfig.model_fields)
    assert {f.name for f in dataclasses.fields(QwenConfig)} <= model_fields
    assert {f.name for f in dataclasses.fields(SamplingConfig)} - set(shared.ENGINE_FIELDS) == rollout_fields
    assert set(shared.ARCHITECTURE_FIELDS) <= model_fields


def test_a_field_added_to_an_owner_dataclass_appears_in_its_section():
    @dataclasses.dataclass(frozen=True)
    class Owner:  # e.g. SamplingConfig after another engineer adds `slots`
        n: int = 1
        slots: int = 4
        scheduler: str = "static"

    Section = pydantic.create_model("OwnerFields", __base__=configuration.Section, **configuration.derived_fields(Owner, {"n": 8}))
    assert Section().model_dump() == {"n": 8, "slots": 4, "scheduler": "static"}
    assert Section.model_validate({"slots": "16"}).slots == 16
    with pytest.raises(pydantic.ValidationError):
        Section.model_validate({"slot": 16})


def test_qwen_config_of_the_built_in_policy_and_of_an_hf_checkpoint(tmp_path):
    model = load_config(overrides=["model.hidden_size=32", "model.num_hidden_layers=1", "model.remat=true"]).model
    expected = QwenConfig(vocab_size=300, hidden_size=32, intermediate_size=384, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                          rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False, qk_norm=True,
                          max_position_embeddings=512, remat=True)
    assert model.qwen_config(300) == expected
    hf = QwenConfig.preset("qwen2.5-0.5b")
    (tmp_path / "config.json").write_text(__import__("json").dumps(hf.to_hf_dict()))
    model = load_config(overrides=[f"model.hf_path={tmp_path}", "model.dtype=bfloat16", "model.hidden_size=8"]).model
    assert model.qwen_config(300) == hf.replace(dtype="bfloat16")  # architecture from config.json, numerics from here


@pytest.mark.parametrize("override, expected", [
    ("rollout.top_k=-1", "rollout.top_k: must be >= 0 (0 = off)"),  # SamplingConfig's own message
    ("rollout.decode_segments=0", "rollout.decode_segments: must be >= 1"),
    ("model.head_dim=15", "model.head_dim: must be even for rotary embeddings"),  # QwenConfig's
    ("model.dtype=float8", "model.dtype: data type 'float8' not understood"),
    ("model.param_dtype=int8", "model.param_dtype: unsupported dtype 'int8'"),
    ("algorithm.loss.clip_low=-0.1", "algorithm.loss.clip_low: must be >= 0"),  # PolicyLossConfig's
    ("algorithm.loss.stapo.entropy_quantile=2", "algorithm.loss.stapo.entropy_quantile: must be in [0, 1]"),
    ("algorithm.loss.clip_low=1.5", "algorithm.loss.clip_low: must be <= 1"),
    ("algorithm.loss.sent.beta=-1", "algorithm.loss.sent.beta: must be >= 0"),
    ("algorithm.loss.clip_cov.lb=5", "algorithm.loss.clip_cov.lb: must be < ub=5.0"),
    ("mesh.data=-1", "mesh: mesh sizes must be positive or one -1"),  # MeshConfig.axis_sizes' rule
])
def test_each_constraint_comes_from_the_class_that_owns_it(override, expected):
    assert expected in _error(override)


def test_an_unknown_loss_key_is_named_with_the_closest_one():
    assert "algorithm.loss.clip_hgh: unknown key (did you mean 'algorithm.loss.clip_high'?)" in _error(
        "algorithm.loss.clip_hgh=0.3")


def test_verifier_and_synthetic_levels_are_checked_before_any_compute():
    assert "data.verifier: 'mathh' is not one of" in _error("data.verifier=mathh")
    assert "did you mean 'math'" in _error("data.verifier=mathh")
    message = _error("data.synthetic_levels=1,12")
    assert "data.synthetic_levels: [12]: levels are numbered 1..11 (1 add1, 2 add2" in message
    assert load_config(overrides=["data.synthetic_levels=3,6"]).data.level_names == ("sub2", "linear")


def test_greedy_sampling_with_several_samples_per_prompt_is_rejected():
    message = _error("rollout.temperature=0")
    assert "rollout.temperature: 0 (greedy) makes the 8 samples of a prompt identical" in message
    assert "grpo advantage is 0" in message
    assert "rollout.n: the rloo advantage needs at least 2" in _error(
        "rollout.temperature=0", "rollout.n=1", "algorithm.advantage_estimator=rloo", "algorithm.mini_batch_size=16")


def test_run_dir_must_be_a_writable_directory(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert f"run_dir: '{a_file}' is a file, not a directory" in _error(f"run_dir={a_file}")
    assert "is not a writable directory" in _error(f"run_dir={a_file}/run")
    assert load_config(overrides=[f"run_dir={tmp_path}/new/run"]).run_dir == f"{tmp_path}/new/run"
    load_config(overrides=[f"run_dir={a_file}"], check_paths=False)  # a config for another machine


def test_eval_benchmark_takes_a_problem_file_as_entropy_rl_eval_does(tmp_path):
    problems = tmp_path / "mine.jsonl"
    problems.write_text('{"problem": "1+1", "answer": "2"}\n')
    assert load_config(overrides=[f"eval.benchmark={problems}"]).eval.benchmark == str(problems)
    assert "eval.benchmark: '/nonexistent.jsonl' is not one of synthetic, aime24" in _error("eval.benchmark=/nonexistent.jsonl")


def test_type_errors_bounds_and_cross_section_errors_are_all_reported():
    message = _error("seed=x", "checkpoint.every_steps=0", "data.reward_timeout_s=-1", "model.vocab_size=-2")
    for expected in ("seed: expected an integer, got 'x'", "checkpoint.every_steps: must be > 0, got 0",
                     "data.reward_timeout_s: must be > 0, got -1", "model.vocab_size: must be >= 0 (0 = the tokenizer's), got -2"):
        assert expected in message
    message = _error("data.batch_size=6", "algorithm.mini_batch_size=4", "algorithm.overlong_buffer_len=20")
    assert "algorithm.overlong_buffer_len: must be < rollout.max_new_tokens=16" in message
    assert "algorithm.mini_batch_size: 4 prompts does not divide data.batch_size=6" in message


def test_loss_section_keeps_the_run_defaults_and_the_library_class():
    config = load_config(overrides=["algorithm.loss.dual_clip_c=none", "algorithm.loss.horizon=null"])
    assert isinstance(config.algorithm.policy_loss(), PolicyLossConfig) and config.algorithm.policy_loss().dual_clip_c is None
    assert config.algorithm.policy_loss().clip_high == 0.28
    assert hash(config) == hash(load_config(overrides=["algorithm.loss.dual_clip_c=null"]))


def test_file_and_shape_errors_name_the_file_or_key(tmp_path):
    bad_yaml, a_list = tmp_path / "bad.yaml", tmp_path / "list.yaml"
    bad_yaml.write_text("model: {hidden_size: 32\n")
    a_list.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=f"{bad_yaml}: not valid YAML"):
        load_config(bad_yaml)
    with pytest.raises(ConfigError, match=f"{a_list}: expected a mapping at the top level"):
        load_config(a_list)
    assert "model: expected a mapping of keys, got '3'" in _error("model=3")
    assert "algorithm.loss: expected a mapping of keys" in _error("algorithm.loss=ppo")


def test_the_eval_section_uses_the_sampling_checks():
    assert "eval.top_p: must be in (0, 1]" in _error("eval.top_p=0")
    assert "eval.n: must be >= 1" in _error("eval.n=0")
    assert "eval.temperature: must be >= 0 (0 = greedy)" in _error("eval.temperature=-1")
