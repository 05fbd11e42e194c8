"""What a run reports: the method by what makes it one, and its time across a resume."""

import time
from types import SimpleNamespace

from entropy_rl.train import loop
from entropy_rl.train.config import load_config


def test_method_label_names_the_method_of_a_config_file():
    assert loop.method_label(load_config("configs/grpo.yaml", check_paths=False)) == \
        "ppo_clip, grpo advantages, seq-mean-token-mean"
    assert loop.method_label(load_config("configs/dapo.yaml", check_paths=False)).endswith(", dynamic sampling")
    assert loop.method_label(load_config(None)).startswith("stapo, ")


def test_run_time_adds_the_earlier_processes_time():
    started = time.time() - 5.0
    seconds = loop.run_seconds(SimpleNamespace(started_at=started), loop.Run(seconds=100.0))
    assert 105.0 <= seconds < 106.0
    assert loop.Run(**{**loop.dataclasses.asdict(loop.Run()), "seconds": 7.0}).seconds == 7.0  # checkpointed as JSON
