"""Test helpers: tiny random transformers Qwen2/Qwen3 checkpoints (the PyTorch parity
oracle) and a jit-compiled forward (eager op-by-op dispatch is slow on CPU)."""

import jax
import numpy as np
import torch
import transformers
from flax import nnx

SMALL = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
             max_position_embeddings=256)


def make_hf_model(model_type: str, path=None, *, seed=0, max_shard_size=None, **overrides):
    """A random transformers Qwen2/Qwen3 causal LM (float32, eager attention), saved to `path`.

    Every parameter, including norm weights (init 1) and biases (init 0), is perturbed so a
    wrong mapping of any tensor changes the logits.
    """
    torch.manual_seed(seed)
    fields = dict(SMALL, rope_theta=5000.0, **overrides)
    rope_theta = fields.pop("rope_theta")
    if model_type == "qwen3":
        config = transformers.Qwen3Config(**fields)
        cls = transformers.Qwen3ForCausalLM
    else:
        config = transformers.Qwen2Config(**fields)
        cls = transformers.Qwen2ForCausalLM
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if ("norm" in name or "bias" in name) else 0.02
            p.add_(scale * torch.randn_like(p))
    if path is not None:
        kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(path, **kwargs)
    return model


def hf_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """transformers logits [B, T, V] with positions = max(cumsum(mask) - 1, 0)."""
    positions = np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(input_ids, dtype=torch.long),
                    attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def padded_batch(vocab_size: int, *, seed=0):
    """input_ids, attention_mask [4, 10]: no padding, left padding (2 rows), right padding."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(1, vocab_size, size=(4, 10)).astype(np.int32)
    attention_mask = np.ones((4, 10), np.int32)
    attention_mask[1, :3] = 0
    attention_mask[2, :6] = 0
    attention_mask[3, 7:] = 0
    input_ids[attention_mask == 0] = 0
    return input_ids, attention_mask


def jit_forward(model):
    """model(input_ids, attention_mask, cache=None) compiled with the module split at the
    jit boundary; returns logits, or (logits, cache) when a cache is passed."""
    graphdef, state = nnx.split(model)
    call = jax.jit(lambda s, ids, mask, cache: nnx.merge(graphdef, s)(ids, mask, cache=cache))
    return lambda ids, mask=None, cache=None: call(state, ids, mask, cache)
