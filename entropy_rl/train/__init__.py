"""The RL trainer: config tree, train step, RL loop, Orbax checkpoints, metric sinks, CLI.

Kept light: importing it loads only the config module; the rest is imported on first use:

    from entropy_rl.train import load_config, train
    summary = train(load_config("configs/grpo.yaml", ["total_steps=20"]))
"""

import importlib

from entropy_rl.train.config import ConfigError, TrainConfig, load_config, validate_config

_LAZY = {
    "train": "entropy_rl.train.loop",
    "Checkpointer": "entropy_rl.train.checkpoint",
    "MetricsLogger": "entropy_rl.train.metrics",
}

__all__ = ["ConfigError", "TrainConfig", "load_config", "validate_config", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entropy_rl.train' has no attribute {name!r}")
