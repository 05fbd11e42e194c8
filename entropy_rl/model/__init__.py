"""Flax NNX Qwen2 / Qwen2.5 / Qwen3 dense decoder, KV cache and HF checkpoint I/O."""

from entropy_rl.model.cache import KVCache
from entropy_rl.model.config import PRESETS, QwenConfig, tiny_config
from entropy_rl.model.qwen import Qwen
from entropy_rl.model.hf_io import load_hf, save_hf

__all__ = ["KVCache", "PRESETS", "Qwen", "QwenConfig", "load_hf", "save_hf", "tiny_config"]
