"""entropy-rl: entropy-aware reinforcement learning with verifiable rewards for Qwen models.

Subpackages (dependencies point one way, bottom to top; the full order is docs/design.md's
"Dependency direction", checked by tests/test_import_layers.py):
  losses, rewards, data   pure building blocks
  parallel, model         the Flax NNX Qwen decoder and its sharding
  rollout                 batched sampling with a KV cache
  config                  the config sections every command shares
  checkpoints, policy     a run's checkpoints as stored; its policy built or loaded
  eval, train             evaluation and plots; the RL loop, saving and resuming
"""

__version__ = "0.1.0"
