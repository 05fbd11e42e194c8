"""What a run reports: the method by what makes it one."""

from entropy_rl.train import loop
from entropy_rl.train.config import load_config


def test_method_label_names_the_method_of_a_config_file():
    assert loop.method_label(load_config("configs/grpo.yaml", check_paths=False)) == \
        "ppo_clip, grpo advantages, seq-mean-token-mean"
    assert loop.method_label(load_config("configs/dapo.yaml", check_paths=False)).endswith(", dynamic sampling")
    assert loop.method_label(load_config(None)).startswith("stapo, ")
