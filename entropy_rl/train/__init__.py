"""The RL trainer: config tree, train step, RL loop, Orbax checkpoints, metric sinks, CLI.

Kept light: `from entropy_rl.train import TrainConfig, load_config` imports only the config
module; the loop, checkpoints and metrics are imported where they are used.
"""

from entropy_rl.train.config import ConfigError, TrainConfig, load_config, validate_config

__all__ = ["ConfigError", "TrainConfig", "load_config", "validate_config"]
