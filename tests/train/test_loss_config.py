"""algorithm.loss grouped by method: each method's fields in its own sub-section, another
method's setting a config error, and the flat keys of older configs still read."""

import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

from entropy_rl.losses import PolicyLossConfig, policy_loss_names
from entropy_rl.train.config import ConfigError, TrainConfig, config_to_dict, load_config, to_yaml
from entropy_rl.train.loss_config import METHOD_FIELDS, LossConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# {method: {key of its sub-section: a value away from the default}}, each a valid config
SETTINGS = {
    "stapo": {"prob_threshold": 0.01, "entropy_quantile": 0.5},
    "sent": {"variant": "code", "low_entropy_ratio": 0.5, "cov_ratio": 0.001, "beta": 0.2, "high_mult": 3.0,
             "low_mult": 0.25},
    "entropy_topk": {"top_ratio": 0.3},
    "kl_cov": {"ratio": 0.01, "beta": 2.0},
    "clip_cov": {"ratio": 0.01, "lb": 0.5, "ub": 4.0},
}


def _error(*overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    return str(info.value)


def _flat(method: str) -> dict[str, object]:
    return {METHOD_FIELDS[method][key]: value for key, value in SETTINGS[method].items()}


def test_every_library_field_is_a_shared_key_or_in_one_registered_method_s_section():
    shared = set(LossConfig.model_fields) - set(METHOD_FIELDS)
    grouped = [field for fields in METHOD_FIELDS.values() for field in fields.values()]
    assert len(grouped) == len(set(grouped)) and not shared & set(grouped)
    assert shared | set(grouped) == {f.name for f in dataclasses.fields(PolicyLossConfig)}
    assert set(METHOD_FIELDS) <= set(policy_loss_names())


@pytest.mark.parametrize("method", SETTINGS)
def test_grouped_and_flat_keys_give_the_same_library_config(method):
    grouped = load_config(overrides=[f"algorithm.name={method}",
                                     *(f"algorithm.loss.{method}.{k}={v}" for k, v in SETTINGS[method].items())])
    assert grouped.algorithm.policy_loss() == PolicyLossConfig(clip_high=0.28, **_flat(method))
    with pytest.warns(FutureWarning) as caught:
        flat = load_config(overrides=[f"algorithm.name={method}",
                                      *(f"algorithm.loss.{f}={v}" for f, v in _flat(method).items())])
    assert flat == grouped
    expected = {f"algorithm.loss.{field} is deprecated: it is now algorithm.loss.{method}.{key}"
                for key, field in METHOD_FIELDS[method].items() if key in SETTINGS[method]}
    assert {str(w.message) for w in caught} == expected


def test_another_method_s_setting_is_an_error_naming_its_key_and_both_methods():
    message = _error("algorithm.loss.sent.beta=0.2", "algorithm.loss.kl_cov.ratio=0.1")  # under stapo
    assert ("algorithm.loss.sent.beta: a setting of method 'sent', but algorithm.name is 'stapo' "
            "(got 0.2; leave it at its default 0.1)") in message
    assert "algorithm.loss.kl_cov.ratio: a setting of method 'kl_cov', but algorithm.name is 'stapo'" in message
    # the same under its old flat name, and at its default it is no setting at all
    with pytest.warns(FutureWarning):
        assert "algorithm.loss.sent.beta: a setting of method 'sent'" in _error("algorithm.loss.sent_beta=0.2")
    assert load_config(overrides=["algorithm.loss.sent.beta=0.1"]).algorithm.name == "stapo"


def test_a_field_the_method_s_variant_does_not_read_is_named_by_its_key():
    message = _error("algorithm.name=sent", "algorithm.loss.sent.kl_kind=k2")  # the "code" variant has no KL
    assert "algorithm.loss.sent.kl_kind: 'k2' has no effect on policy loss 'sent'" in message
    config = load_config(overrides=["algorithm.name=sent", "algorithm.loss.sent.variant=paper",
                                    "algorithm.loss.sent.kl_kind=k2"])
    assert config.algorithm.policy_loss().sent_kl_kind == "k2"


def test_an_old_and_a_new_key_of_one_setting_are_an_error_reported_with_the_others():
    message = _error("algorithm.loss.stapo_prob_threshold=0.01", "algorithm.loss.stapo.prob_threshold=0.02", "seed=x")
    assert ("algorithm.loss.stapo_prob_threshold: the old name of algorithm.loss.stapo.prob_threshold, which is "
            "set too; keep only algorithm.loss.stapo.prob_threshold") in message
    assert "seed: expected an integer" in message


def _saved_before_grouping(config: TrainConfig) -> dict:
    """The config as a run directory's config.yaml held it before the grouping: flat loss keys."""
    values = config_to_dict(config)
    loss = values["algorithm"]["loss"]
    for method, fields in METHOD_FIELDS.items():
        section = loss.pop(method)
        loss |= {field: section[key] for key, field in fields.items()}
    return values


@pytest.mark.parametrize("name", ["sent", "kl_cov"])
def test_an_old_run_s_flat_config_loads_equal_and_resumes_without_changes(tmp_path, monkeypatch, name):
    import jax.numpy as jnp

    from entropy_rl.train import checkpoint

    config = load_config(CONFIGS / f"{name}.yaml", [f"run_dir={tmp_path}"])
    saved = _saved_before_grouping(config)
    assert "sent_beta" in saved["algorithm"]["loss"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.warns(FutureWarning):
        assert load_config(tmp_path / "config.yaml") == config  # `entropy-rl train --config RUN_DIR/config.yaml`
    params, train_state = {"w": jnp.arange(3.0)}, {"step": jnp.asarray(1)}
    monkeypatch.setattr(checkpoint, "config_to_dict", _saved_before_grouping)  # saved as older versions did
    with checkpoint.Checkpointer(tmp_path, async_save=False) as saver:
        saver.save(1, params=params, train_state=train_state, data_state={}, config=config)
    messages = []
    with checkpoint.Checkpointer(tmp_path) as loader, pytest.warns(FutureWarning):
        assert loader.saved_config(1) == config
        assert loader.resume(params=params, train_state=train_state, config=config, log=messages.append).step == 1
    assert messages == []  # no config change


def test_the_saved_config_has_the_grouped_keys_and_loads_without_a_warning(tmp_path):
    config = load_config(CONFIGS / "clip_cov.yaml")
    assert yaml.safe_load(to_yaml(config))["algorithm"]["loss"]["clip_cov"] == {"ratio": 0.0002, "lb": 1.0, "ub": 5.0}
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads_with_the_grouped_keys(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no flat key left
        load_config(path, check_paths=False)
