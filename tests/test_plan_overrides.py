"""`plan --model PRESET model.<architecture field>=...` plans the preset with the override."""

from entropy_rl import plan as planning
from entropy_rl.train.config import load_config


def test_architecture_overrides_apply_to_the_preset():
    overrides = ["model.num_hidden_layers=4", "rollout.n=4", "model.dtype=bfloat16"]
    config = load_config(None, overrides, check_paths=False)
    assert planning.architecture_overrides(config, overrides) == {"num_hidden_layers": 4}
    policy = planning._policy_config(config, "qwen3-8b", planning.architecture_overrides(config, overrides))
    assert (policy.num_hidden_layers, policy.hidden_size, policy.dtype) == (4, 4096, "bfloat16")
    assert planning._policy_config(config, "qwen3-8b").num_hidden_layers == 36
