"""Hugging Face checkpoint I/O for Qwen: safetensors in, safetensors + config.json out.

Reading uses the safetensors numpy API (no torch) and fetches, per device, only the slice
of each tensor that device holds (jax.make_array_from_callback), so with a mesh no host
materialises parameters it does not own. transformers stores Linear weights [out, in] with
heads flattened; ours are [out, in] too, with heads as their own axis, hence `_Layout`:

    ours = split(hf)   where split turns dim `split_dim` (n * head_dim) into (n, head_dim)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from entropy_rl.model.config import QwenConfig, dtype_name
from entropy_rl.model.qwen import Qwen

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
EXPORT_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one of our parameters is stored in a transformers checkpoint: the same array, with
    dim `split_dim` (n * head_dim) of the hf tensor split into (n, head_dim) in ours."""

    hf_name: str
    split_dim: int | None = None
    head_dim: int = 0

    def _split_shape(self, hf_shape: tuple) -> tuple:
        if self.split_dim is None:
            return tuple(hf_shape)
        d = self.split_dim
        return hf_shape[:d] + (hf_shape[d] // self.head_dim, self.head_dim) + hf_shape[d + 1:]

    def to_ours(self, hf: np.ndarray) -> np.ndarray:
        return hf.reshape(self._split_shape(hf.shape))

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.split_dim is None:
            return ours
        d = self.split_dim
        return ours.reshape(ours.shape[:d] + (-1,) + ours.shape[d + 2:])

    def read(self, tensor_slice, hf_shape: tuple, index: tuple) -> np.ndarray:
        """Our block `index` (slices into our shape), reading only the hf rows it needs."""
        split_shape = self._split_shape(tuple(hf_shape))
        split_index = [slice(*where.indices(size)[:2]) for where, size in zip(index, split_shape)]
        if self.split_dim is None:
            return tensor_slice[tuple(split_index)]
        d, hd = self.split_dim, self.head_dim
        heads = split_index[d]
        hf_index = split_index[:d] + [slice(heads.start * hd, heads.stop * hd)] + split_index[d + 2:]
        block = tensor_slice[tuple(hf_index)]
        block = block.reshape(self._split_shape(block.shape))
        return block[(slice(None),) * (d + 1) + (split_index[d + 1],)]


def _layouts(config: QwenConfig) -> dict[tuple, _Layout]:
    """Our state path -> its layout in a transformers Qwen2/Qwen3 checkpoint."""
    hd = config.head_dim
    layouts = {("embed_tokens",): _Layout("model.embed_tokens.weight"),
               ("norm", "weight"): _Layout("model.norm.weight")}
    if not config.tie_word_embeddings:
        layouts[("lm_head",)] = _Layout("lm_head.weight")
    for i in range(config.num_hidden_layers):
        hf = f"model.layers.{i}."
        ours = {
            ("self_attn", "q_proj"): _Layout(hf + "self_attn.q_proj.weight", 0, hd),
            ("self_attn", "k_proj"): _Layout(hf + "self_attn.k_proj.weight", 0, hd),
            ("self_attn", "v_proj"): _Layout(hf + "self_attn.v_proj.weight", 0, hd),
            ("self_attn", "o_proj"): _Layout(hf + "self_attn.o_proj.weight", 1, hd),
            ("mlp", "gate_proj"): _Layout(hf + "mlp.gate_proj.weight"),
            ("mlp", "up_proj"): _Layout(hf + "mlp.up_proj.weight"),
            ("mlp", "down_proj"): _Layout(hf + "mlp.down_proj.weight"),
            ("input_layernorm", "weight"): _Layout(hf + "input_layernorm.weight"),
            ("post_attention_layernorm", "weight"): _Layout(hf + "post_attention_layernorm.weight"),
        }
        if config.attention_bias:
            for p in "qkv":
                ours[("self_attn", f"{p}_bias")] = _Layout(hf + f"self_attn.{p}_proj.bias", 0, hd)
        if config.qk_norm:
            for p in "qk":
                ours[("self_attn", f"{p}_norm", "weight")] = _Layout(hf + f"self_attn.{p}_norm.weight")
        layouts.update({("layers", i) + path: layout for path, layout in ours.items()})
    return layouts


def _weight_files(path: str) -> dict[str, str]:
    """hf tensor name -> safetensors file, from the index or the single file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index}: no 'weight_map'")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    single = os.path.join(path, SINGLE_FILE)
    if not os.path.exists(single):
        raise FileNotFoundError(f"{path}: neither {INDEX_FILE} nor {SINGLE_FILE} found")
    with safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}


def load_hf(path: str, *, dtype=jnp.float32, param_dtype=None, mesh: jax.sharding.Mesh | None = None,
            **config_overrides) -> Qwen:
    """A Qwen model with the weights of the local HF checkpoint directory `path`.

    dtype: compute dtype; param_dtype: storage dtype (default: dtype). With `mesh`, every
    parameter is created directly in its NamedSharding (entropy_rl.parallel rules), each
    device reading only its own slice. `config_overrides` set other QwenConfig fields
    (e.g. remat=True).
    """
    from entropy_rl.parallel.sharding import variable_sharding

    param_dtype = dtype if param_dtype is None else param_dtype
    config = QwenConfig.from_hf(path, dtype=dtype_name(dtype), param_dtype=dtype_name(param_dtype),
                                **config_overrides)
    target_dtype = jnp.dtype(config.param_dtype)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))
    files = _weight_files(path)
    layouts = _layouts(config)
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(f, framework="numpy"))
                   for f in sorted(set(files.values()))}
        flat = nnx.to_flat_state(state)
        for var_path, variable in flat:
            layout = layouts[var_path]
            if layout.hf_name not in files:
                raise KeyError(f"{path}: checkpoint has no tensor {layout.hf_name!r}")
            tensor = handles[files[layout.hf_name]].get_slice(layout.hf_name)
            hf_shape = tuple(tensor.get_shape())
            shape = variable.get_value().shape
            if layout.to_ours(np.empty(hf_shape, np.int8)).shape != shape:
                raise ValueError(f"{path}: tensor {layout.hf_name!r} has shape {hf_shape}, "
                                 f"which does not fit the config (expects {shape})")

            def read(index, layout=layout, tensor=tensor, hf_shape=hf_shape):
                return layout.read(tensor, hf_shape, index).astype(target_dtype)

            if mesh is None:
                value = jnp.asarray(read((slice(None),) * len(shape)))
            else:
                value = jax.make_array_from_callback(shape, variable_sharding(variable, mesh), read)
            variable.set_value(value)
        state = nnx.from_flat_state(flat)
    return nnx.merge(graphdef, state)


def _host_array(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host sharded) array as numpy on this host."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_hf(model: Qwen, path: str, *, dtype: str | None = None, eos_token_ids: Sequence[int] = (),
            pad_token_id: int | None = None, bos_token_id: int | None = None,
            max_shard_bytes: int = 2 * 1024 ** 3) -> None:
    """Writes `model` as a transformers checkpoint: config.json, safetensors shard(s), index,
    and, when stop tokens are given, generation_config.json.

    Tensors keep the parameter dtype unless `dtype` ("float32" | "bfloat16") is given. The
    token ids go into config.json (`eos_token_id` = the first stop token, `pad_token_id`,
    `bos_token_id`) and generation_config.json (`eos_token_id` = every stop token), so
    transformers' `generate` and servers stop where the sampler stops. A single file when it
    fits in `max_shard_bytes`, else model-0000i-of-0000n.safetensors +
    model.safetensors.index.json. Files get the usual permissions (0666 less the umask). In a
    multi-host run every process must call it; process 0 writes.
    """
    config = model.config
    layouts = _layouts(config)
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ValueError(f"save_hf: dtype {dtype!r} is not one of {EXPORT_DTYPES}")
    cast = (lambda array: array) if dtype is None else (lambda array: array.astype(jnp.dtype(dtype)))
    tensors = {}
    for var_path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        layout = layouts[var_path]
        tensors[layout.hf_name] = np.ascontiguousarray(cast(layout.to_hf(_host_array(variable.get_value()))))
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    token_ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_ids[0] if eos_token_ids else None,
                 "pad_token_id": pad_token_id}
    hf_config = config.to_hf_dict() | {key: value for key, value in token_ids.items() if value is not None}
    if dtype is not None:
        hf_config["torch_dtype"] = dtype
    _write_json(os.path.join(path, "config.json"), hf_config)
    if eos_token_ids:
        generation = token_ids | {"eos_token_id": list(eos_token_ids)}
        _write_json(os.path.join(path, GENERATION_CONFIG_FILE),
                    {key: value for key, value in generation.items() if value is not None})
    shards = _split_shards(tensors, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                                     for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(path, name), metadata={"format": "pt"})
        _usual_permissions(os.path.join(path, name))  # safetensors writes 0600
    if len(shards) > 1:
        weight_map = {tensor_name: name for name, shard in zip(names, shards) for tensor_name in shard}
        _write_json(os.path.join(path, INDEX_FILE),
                    {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map})


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def _usual_permissions(path: str) -> None:
    """chmod to 0666 less the process umask, as `open(path, "w")` would have created it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _split_shards(tensors: dict[str, np.ndarray], max_shard_bytes: int) -> list[dict]:
    """Tensors in order, grouped greedily into shards of at most max_shard_bytes (>= 1 tensor)."""
    shards, size = [{}], 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    return shards
