"""A random one-layer Qwen3 checkpoint for the multi-process command tests."""

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from entropy_rl.data import load_tokenizer
from entropy_rl.model import Qwen, save_hf, tiny_config


def save_tiny_policy(path: Path, seed: int, **overrides) -> str:
    """A random one-layer Qwen3 with the built-in vocabulary (or `overrides` of `tiny_config`)
    saved as an HF checkpoint in `path` (weights 0.1 * N(0, 1) drawn with numpy from `seed`:
    no init compiles); returns the path."""
    config = tiny_config(**{"vocab_size": load_tokenizer("builtin").vocab_size, "num_hidden_layers": 1, **overrides})
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jax.device_put((0.1 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)
    save_hf(nnx.merge(graphdef, params), str(path))
    return str(path)
