"""QwenConfig: the Qwen2 / Qwen2.5 / Qwen3 dense decoder as data (MaxText style).

One frozen, hashable dataclass covers both families: Qwen2/Qwen2.5 have q/k/v biases
(`attention_bias=True`, `qk_norm=False`); Qwen3 has a per-head RMSNorm on q and k
(`qk_norm=True`) and a head_dim independent of hidden_size / num_attention_heads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from entropy_rl.model.attention import check_attention_options

_DTYPES = ("float32", "bfloat16", "float16")


def dtype_name(dtype: Any) -> str:
    """Canonical name of a dtype given as a string, numpy or jax dtype ("float32", "bfloat16")."""
    name = jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {_DTYPES}")
    return name


# jax.checkpoint_policies a rematerialised layer may use (QwenConfig.remat_policy).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True)
class QwenConfig:
    """Architecture and numerics of a Qwen dense decoder.

    `dtype` is the compute dtype (activations, matmul inputs), `param_dtype` the storage dtype
    of the parameters; both are stored as names ("float32", "bfloat16") so the config stays
    YAML-friendly and hashable. Norms, softmax and logits are float32 whatever these are.
    `remat=True` rematerialises each decoder layer in the backward pass (training memory),
    saving what `remat_policy` names (a `jax.checkpoint_policies` member, see REMAT_POLICIES):
    "nothing_saveable" (default: only the layer's input, the least memory), "dots_saveable" or
    "dots_with_no_batch_dims_saveable" (matmul outputs kept: less recomputation, more memory).
    `scan_layers=True` runs the cache-free forward (training, log-probs, prefill) as one
    jax.lax.scan over the stacked layers, so compile time and the compiler's memory analysis
    do not grow with depth (the paper configs); False (default) unrolls the layers, which keeps
    the CPU runs' numerics bit for bit. Parameters are stored per layer either way.
    `attention_implementation` picks the attention kernel of a forward pass without a KV
    cache: "auto" (splash on TPU, cuDNN on GPU in bfloat16/float16, else dense up to
    `attention_block_size` tokens and blockwise (flash) attention beyond, whose memory grows
    as T * attention_block_size instead of T^2), "dense", "blockwise", "splash", "cudnn" or
    "pallas_gpu"; `attention_interpret=True` runs the Pallas kernels (splash, pallas_gpu)
    in interpret mode, on any backend (see model/attention.py).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = True
    max_position_embeddings: int = 40960
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing_saveable"
    scan_layers: bool = False
    attention_block_size: int = 512
    attention_implementation: str = "auto"
    attention_interpret: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "param_dtype", dtype_name(self.param_dtype))
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "attention_block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"QwenConfig.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"QwenConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        try:
            check_attention_options(self.attention_implementation, self.attention_interpret,
                                    self.dtype, self.head_dim)
        except ValueError as error:
            raise ValueError(f"QwenConfig: {error}") from None

    @property
    def model_type(self) -> str:
        """The transformers model_type: "qwen3" when q/k norms are present, else "qwen2"."""
        return "qwen3" if self.qk_norm else "qwen2"

    def replace(self, **changes) -> "QwenConfig":
        """A copy with some fields changed (e.g. dtype="bfloat16", remat=True)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> "QwenConfig":
        """A published architecture by name, e.g. "qwen3-1.7b", "qwen2.5-math-7b"."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(f"unknown Qwen preset {name!r}; known presets: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    @classmethod
    def from_hf_dict(cls, hf: dict, *, source: str = "config", **overrides) -> "QwenConfig":
        """Reads a transformers Qwen2/Qwen3 config dict (transformers 4.x or 5.x layout)."""
        model_type = hf.get("model_type")
        if model_type not in ("qwen2", "qwen3"):
            raise ValueError(f"{source}: model_type {model_type!r} is not supported; "
                             "expected 'qwen2' or 'qwen3' (dense models)")
        missing = [k for k in _REQUIRED_HF_KEYS if k not in hf]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {missing}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
        if hf.get("use_sliding_window", False):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (default RoPE only)")
        heads = hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # transformers' Qwen2 always has q/k/v biases; Qwen3 reads attention_bias.
            attention_bias=True if model_type == "qwen2" else bool(hf.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=hf.get("max_position_embeddings", 32768),
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_hf(cls, path: str, **overrides) -> "QwenConfig":
        """Reads `path/config.json` (or a config.json path) of a local HF checkpoint."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise FileNotFoundError(f"no config.json at {file}")
        with open(file) as f:
            return cls.from_hf_dict(json.load(f), source=file, **overrides)

    def to_hf_dict(self) -> dict:
        """A transformers config dict (model_type qwen2 / qwen3) describing this architecture."""
        arch = "Qwen3ForCausalLM" if self.qk_norm else "Qwen2ForCausalLM"
        hf = dict(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            rope_scaling=None,
            tie_word_embeddings=self.tie_word_embeddings,
            use_sliding_window=False,
            sliding_window=None,
            attention_dropout=0.0,
            use_cache=True,
            torch_dtype=self.param_dtype,
        )
        if self.qk_norm:
            hf["attention_bias"] = self.attention_bias
        elif not self.attention_bias:
            raise ValueError("a Qwen2 checkpoint (qk_norm=False) always has q/k/v biases; "
                             "attention_bias=False cannot be saved in the transformers format")
        return hf


_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads")


def _qwen3(hidden, inter, layers, heads, tied):
    return QwenConfig(vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
                      head_dim=128, rope_theta=1_000_000.0, tie_word_embeddings=tied,
                      attention_bias=False, qk_norm=True, max_position_embeddings=40960)


def _qwen2(vocab, hidden, inter, layers, heads, kv_heads, tied, theta, max_pos):
    return QwenConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, head_dim=hidden // heads, rope_theta=theta,
                      tie_word_embeddings=tied, attention_bias=True, qk_norm=False,
                      max_position_embeddings=max_pos)


PRESETS: dict[str, QwenConfig] = {
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, tied=True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, tied=True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, tied=True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, tied=False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, tied=False),
    "qwen2.5-0.5b": _qwen2(151936, 896, 4864, 24, 14, 2, True, 1_000_000.0, 32768),
    "qwen2.5-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, True, 1_000_000.0, 131072),
    "qwen2.5-7b": _qwen2(152064, 3584, 18944, 28, 28, 4, False, 1_000_000.0, 131072),
    "qwen2.5-math-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, True, 10000.0, 4096),
    "qwen2.5-math-7b": _qwen2(152064, 3584, 18944, 28, 28, 4, False, 10000.0, 4096),
    "deepseek-r1-distill-qwen-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, False, 10000.0, 131072),
}


def tiny_config(**overrides) -> QwenConfig:
    """A small random-init Qwen3 architecture for tests (about 70k parameters)."""
    fields = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                  qk_norm=True, max_position_embeddings=512)
    fields.update(overrides)
    return QwenConfig(**fields)
