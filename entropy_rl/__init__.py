"""entropy-rl: entropy-aware reinforcement learning with verifiable rewards for Qwen models.

Subpackages (dependencies point one way, bottom to top):
  losses, rewards, data   pure building blocks
  parallel, model         the Flax NNX Qwen decoder and its sharding
  rollout                 batched sampling with a KV cache
  train, eval             the RL loop, checkpoints, evaluation and plots
"""

__version__ = "0.1.0"
