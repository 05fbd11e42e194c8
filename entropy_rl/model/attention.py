"""Causal self-attention by backend: dense, blockwise, Pallas splash (TPU), cuDNN and Pallas (GPU).

`causal_attention(q, k, v, attention_mask, block_size, implementation, interpret, segment_ids)`
is the attention of a forward pass without a KV cache (training, scoring, prefill); decoding
keeps `layers.cached_attention`'s single-query path. Every implementation takes the same two
int32 [B, T] segment arrays: a query t sees key s iff s <= t, key_segments[s] != 0 and
query_segments[t] == key_segments[s]. Without `segment_ids` (a padded batch) every query is
segment 1 and a key is segment 1 iff it is real; with them (packed rows, see
entropy_rl.train.packing: several sequences per row, contiguous runs numbered 1, 2, ... and
0 on padding) both are `segment_ids`, so no token attends across a sequence boundary. The
implementations (QwenConfig.attention_implementation):

- "dense": `grouped_attention`, which keeps the [B, H, T, T] probabilities for the backward.
- "blockwise": `blockwise.blockwise_causal_attention`, flash attention in plain JAX with a
  hand-written backward (memory O(T * block_size)); the fastest choice on XLA:CPU. With
  segment ids it also skips the block pairs no segment spans.
- "splash": Pallas splash attention for TPU (jax.experimental.pallas.ops.tpu.splash_attention,
  as in MaxText and Tunix): one MQA kernel per kv head, vmapped over kv heads and rows;
  the segments are its `SegmentIds`.
- "cudnn": cuDNN flash attention (`jax.nn.dot_product_attention(implementation="cudnn")`,
  bfloat16/float16 only). It masks padding only through per-row `query_seq_lengths` and
  `key_value_seq_lengths` (a boolean mask would become a dense [B, 1, T, S] bias), i.e. for
  right-padded rows. Each row's real tokens are therefore packed to its front (a stable
  gather that keeps their order, hence causality), attended with length = number of real
  tokens, and scattered back: any layout (left-padded prompt + right-padded response, holes)
  in, the same layout out, so the losses see what they always saw. Packed rows (segment
  ids) go through the same function's boolean `mask` (same segment), which it documents as
  a dense [B, 1, T, T] bias: correct, but not O(T) memory; prefer "pallas_gpu" for packing.
- "pallas_gpu": the Pallas Triton kernel (jax.experimental.pallas.ops.gpu.attention.mha),
  kv heads repeated to the query heads; its segment ids are shared by queries and keys
  (the key segments: padding, segment 0, sees only padding and is zeroed).
- "auto": splash on TPU; cuDNN on GPU for bfloat16/float16 (the XLA choice below for
  float32, which cuDNN's flash attention does not take); elsewhere dense up to `block_size`
  tokens and blockwise beyond.

`interpret=True` runs the two Pallas kernels with the Pallas interpreter (any backend, e.g.
CPU tests). All implementations agree on every real query token: it attends to the real
keys at or before it. Rows of padding queries are not read by the model's losses and
differ: the kernels return zeros there (dense and blockwise attend over the real keys
before them, or return uniform weights / zeros when there are none).

In a sharded model (under `jax.set_mesh` with the ("data", "fsdp", "tensor") axes) the
kernels run under `jax.shard_map` over the batch ("data", "fsdp") and kv heads ("tensor"),
as Tunix's Qwen3 does, so each device attends its own rows and heads and the fsdp x tensor
sharding of the train step is kept.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from entropy_rl.model.blockwise import NEG_INF, blockwise_causal_attention
from entropy_rl.parallel.mesh import MESH_AXES
from entropy_rl.parallel.sharding import logical_to_mesh
from entropy_rl.parallel.xla import traced_platform

IMPLEMENTATIONS = ("auto", "dense", "blockwise", "splash", "cudnn", "pallas_gpu")
PALLAS_IMPLEMENTATIONS = ("splash", "pallas_gpu")  # those with an interpret mode
CUDNN_DTYPES = ("bfloat16", "float16")
SPLASH_BLOCK_MULTIPLE = 128  # splash's key blocks are whole TPU vector lanes
PALLAS_GPU_BLOCK = 128  # the Triton kernel's forward query/key block (its default)
CUDNN_IMPLEMENTATION = "cudnn"  # jax.nn.dot_product_attention's name for the cuDNN kernel


def check_attention_options(implementation: str, interpret: bool, dtype: str, head_dim: int) -> None:
    """Raises ValueError for an implementation that cannot run with these options."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
    if not isinstance(interpret, bool):
        raise ValueError(f"attention_interpret must be true or false, got {interpret!r}")
    if interpret and implementation not in PALLAS_IMPLEMENTATIONS:
        raise ValueError(f"attention_interpret=True runs a Pallas kernel {PALLAS_IMPLEMENTATIONS} in "
                         f"interpret mode; attention_implementation={implementation!r} has none")
    if implementation == "cudnn" and dtype not in CUDNN_DTYPES:
        raise ValueError(f"attention_implementation='cudnn' needs dtype in {CUDNN_DTYPES} "
                         f"(cuDNN flash attention), got dtype={dtype!r}")
    if implementation == "cudnn" and (head_dim % 8 or head_dim > 256):
        raise ValueError(f"attention_implementation='cudnn' needs head_dim a multiple of 8 and "
                         f"at most 256, got {head_dim}")


def resolve_implementation(implementation: str, length: int, block_size: int, dtype) -> str:
    """The implementation `causal_attention` runs: `implementation` itself unless "auto",
    which picks by the platform being traced for (`traced_platform`: the mesh's under
    jax.set_mesh, else jax.default_backend()), the dtype and the length T."""
    if implementation != "auto":
        return implementation
    backend = traced_platform()
    if backend == "tpu":
        return "splash"
    if backend == "gpu" and jnp.dtype(dtype).name in CUDNN_DTYPES:
        return "cudnn"
    return "dense" if length <= block_size else "blockwise"


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array,
                     block_size: int, implementation: str = "auto", interpret: bool = False,
                     segment_ids: jax.Array | None = None) -> jax.Array:
    """Causal self-attention of T tokens: q [B, T, H, D], k/v [B, T, KV, D], attention_mask
    [B, T] (1 = real token) -> [B, T, H, D]; a real query t sees key s iff s <= t, s is real
    and, given segment_ids int [B, T] (packed rows), s is in t's segment; softmax(q k^T /
    sqrt(D)) in float32 (see the module docstring for padding rows).

    `block_size` is the blockwise kernel's block and the splash kernel's (rounded up to a
    multiple of 128); `implementation` and `interpret` as in QwenConfig.
    """
    chex.assert_rank([q, k, v, attention_mask], [4, 4, 4, 2])
    query_segments, key_segments = attention_segments(attention_mask, segment_ids)
    name = resolve_implementation(implementation, q.shape[1], block_size, q.dtype)
    if name == "dense":
        return grouped_attention(q, k, v, segment_causal_mask(query_segments, key_segments))
    if name == "blockwise":
        return blockwise_causal_attention(q, k, v, key_segments != 0, block_size, segment_ids=segment_ids)
    kernels = {
        "splash": functools.partial(splash_attention, block_size=block_size, interpret=interpret),
        "pallas_gpu": functools.partial(pallas_gpu_attention, interpret=interpret),
        "cudnn": packed_lengths_attention if segment_ids is None else segment_mask_attention,
    }
    return _over_batch_and_heads(kernels[name], q, k, v, query_segments, key_segments)


def attention_segments(attention_mask: jax.Array, segment_ids: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(query_segments, key_segments) int32 [B, T]: (1, mask) for a padded batch, both
    `segment_ids` for packed rows."""
    if segment_ids is None:
        return jnp.ones(attention_mask.shape, jnp.int32), attention_mask.astype(jnp.int32)
    chex.assert_equal_shape([attention_mask, segment_ids])
    segment_ids = segment_ids.astype(jnp.int32)
    return segment_ids, segment_ids


def segment_causal_mask(query_segments: jax.Array, key_segments: jax.Array) -> jax.Array:
    """bool [B, T, T]: query t sees key s iff s <= t, key s is real (segment != 0) and in t's segment."""
    length = key_segments.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    same = query_segments[:, :, None] == key_segments[:, None, :]
    return causal[None] & same & (key_segments != 0)[:, None, :]


def _over_batch_and_heads(kernel, q, k, v, query_segments, key_segments):
    """kernel(q, k, v, query_segments, key_segments) under jax.shard_map over the batch and
    kv-head mesh axes when tracing under a mesh with our axes (a dimension they do not
    divide stays whole); the plain call otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return kernel(q, k, v, query_segments, key_segments)
    batch_axes = logical_to_mesh(("batch",), mesh, key_segments.shape[:1])[0]
    head_axes = logical_to_mesh(("kv_heads",), mesh, k.shape[2:3])[0]
    heads = PartitionSpec(batch_axes, None, head_axes, None)
    rows = PartitionSpec(batch_axes, None)
    return jax.shard_map(kernel, in_specs=(heads, heads, heads, rows, rows),
                         out_specs=heads, check_vma=False)(q, k, v, query_segments, key_segments)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_length(x: jax.Array, length: int, axis: int = 1) -> jax.Array:
    """x zero-padded at the end of `axis` to `length`."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths)


def _zero_padding_queries(out: jax.Array, real: jax.Array) -> jax.Array:
    """out [B, T, H, D] with the rows of padding queries (real [B, T] False) set to 0."""
    return jnp.where(real[:, :, None, None], out, jnp.zeros((), out.dtype))


def splash_attention(q, k, v, query_segments, key_segments, *, block_size: int, interpret: bool) -> jax.Array:
    """Pallas splash attention: q [B, T, H, D], k/v [B, T, KV, D], segments int32 [B, T]
    (`attention_segments`) -> [B, T, H, D], zeros at padding queries.

    T is padded to a multiple of the block (min(block_size, T) rounded up to 128); the
    padded keys are segment 0 and seen by no real query. Splash has no softmax scale: q is
    multiplied by 1/sqrt(D) first (as MaxText does). On TPU, bfloat16 inputs need the
    default matmul precision: Mosaic rejects jax_default_matmul_precision="highest" there.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    block = _round_up(min(block_size, length), SPLASH_BLOCK_MULTIPLE)
    padded = _round_up(length, block)
    scaled = (q.astype(jnp.float32) * head_dim ** -0.5).astype(q.dtype)
    q_heads = _pad_length(scaled, padded).reshape(batch, padded, kv_heads, heads // kv_heads, head_dim)
    q_heads = q_heads.transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, D]
    k_heads, v_heads = (_pad_length(x, padded).transpose(0, 2, 1, 3) for x in (k, v))  # [B, KV, T, D]
    segments = splash.SegmentIds(q=_pad_length(query_segments, padded), kv=_pad_length(key_segments, padded))
    kernel = _splash_kernel(padded, heads // kv_heads, block, interpret)
    per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    out = jax.vmap(per_kv_head)(q_heads, k_heads, v_heads, segments)  # [B, KV, G, T, D]
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, padded, heads, head_dim)[:, :length]
    return _zero_padding_queries(out, key_segments != 0)


def _splash_kernel(length: int, groups: int, block: int, interpret: bool):
    """The causal splash MQA kernel of `groups` query heads over one kv head, T = length.
    Built at each trace: its block-mask tables become constants of the traced program."""
    mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * groups)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                              block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def pallas_gpu_attention(q, k, v, query_segments, key_segments, *, interpret: bool) -> jax.Array:
    """The Pallas Triton flash-attention kernel: q [B, T, H, D], k/v [B, T, KV, D], segments
    int32 [B, T] (`attention_segments`) -> [B, T, H, D]. Its segment ids are shared by
    queries and keys, the key segments: a real token sees the real tokens of its segment;
    padding (and T padded to a multiple of 128) is segment 0, its rows zeroed."""
    del query_segments  # equal to key_segments at every real query
    length, heads, head_dim = q.shape[1:]
    groups = heads // k.shape[2]
    padded = _round_up(length, PALLAS_GPU_BLOCK)
    k_rows, v_rows = (_pad_length(jnp.repeat(x, groups, axis=2), padded) for x in (k, v))
    segments = _pad_length(key_segments, padded)
    out = pallas_gpu.mha(_pad_length(q, padded), k_rows, v_rows, segments, sm_scale=head_dim ** -0.5,
                         causal=True, interpret=interpret)
    return _zero_padding_queries(out[:, :length], key_segments != 0)


def packed_lengths_attention(q, k, v, query_segments, key_segments, implementation: str | None = None
                             ) -> jax.Array:
    """Attention through `jax.nn.dot_product_attention`'s per-row lengths: q [B, T, H, D],
    k/v [B, T, KV, D], the segments of a padded batch (query segments all 1, `real` =
    key_segments != 0) -> [B, T, H, D].

    Each row's real tokens are moved to its front in their order (`order`, a stable sort
    of the padding flags), so row b is right-padded with lengths[b] real tokens; causal
    attention with query/key lengths, then the inverse gather restores the layout.
    `implementation` defaults to CUDNN_IMPLEMENTATION ("xla" computes the same on any backend).
    """
    del query_segments
    real = key_segments != 0
    order = jnp.argsort(~real, axis=1, stable=True)  # [B, T]: real positions first
    restore = jnp.argsort(order, axis=1)
    lengths = jnp.sum(real, axis=1, dtype=jnp.int32)

    def gather(x, index):
        return jnp.take_along_axis(x, index[:, :, None, None], axis=1)

    out = jax.nn.dot_product_attention(
        gather(q, order), gather(k, order), gather(v, order), scale=q.shape[-1] ** -0.5, is_causal=True,
        query_seq_lengths=lengths, key_value_seq_lengths=lengths,
        implementation=implementation or CUDNN_IMPLEMENTATION)
    return _zero_padding_queries(gather(out, restore), real)


def segment_mask_attention(q, k, v, query_segments, key_segments, implementation: str | None = None
                           ) -> jax.Array:
    """Packed rows through `jax.nn.dot_product_attention` (is_causal, and the boolean
    same-segment mask of `segment_causal_mask`, a dense bias): q [B, T, H, D], k/v
    [B, T, KV, D], segments int32 [B, T] -> [B, T, H, D], zeros at padding queries.
    `implementation` defaults to CUDNN_IMPLEMENTATION."""
    mask = segment_causal_mask(query_segments, key_segments)[:, None]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5, is_causal=True,
                                       implementation=implementation or CUDNN_IMPLEMENTATION)
    return _zero_padding_queries(out, key_segments != 0)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """bool [B, T, T]: query t sees key s iff s <= t and key s is a real token."""
    chex.assert_rank(attention_mask, 2)
    length = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) + mask) v without repeating the kv heads.

    q [B, T, H, D], k/v [B, S, KV, D], mask bool [B, T, S] -> [B, T, H, D]. The H = KV * G
    query heads are grouped G per kv head; scores and softmax are float32. Fully masked
    rows (padding queries) get uniform weights instead of NaN, and no gradient.

    Computed head-major: the G * T queries of a kv head are the rows of one matmul. The
    gradient is written by hand (`_attention_backward`), about 1.2x faster on CPU than
    autodiff's, which transposes the [.., T, S] score gradients.
    """
    chex.assert_rank([q, k, v, mask], [4, 4, 4, 3])
    return _attention(q, k, v, mask)


def _to_head_major(x: jax.Array, kv_heads: int) -> jax.Array:
    """[B, T, KV * G, D] -> [B, KV, G * T, D]."""
    batch, length, heads, head_dim = x.shape
    x = x.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    return x.transpose(0, 2, 3, 1, 4).reshape(batch, kv_heads, -1, head_dim)


def _from_head_major(x: jax.Array, length: int) -> jax.Array:
    """[B, KV, G * T, D] -> [B, T, KV * G, D]."""
    batch, kv_heads, rows, head_dim = x.shape
    x = x.reshape(batch, kv_heads, rows // length, length, head_dim)
    return x.transpose(0, 3, 1, 2, 4).reshape(batch, length, -1, head_dim)


def _attention_forward(q, k, v, mask):
    """(out [B, T, H, D], residuals): probs = softmax(where(mask, q k^T / sqrt(D), -inf))
    [B, KV, G * T, S] (float32), out = probs v."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q_rows = _to_head_major(q, kv_heads)
    keys, values = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkmd,bksd->bkms", q_rows, keys, preferred_element_type=jnp.float32)
    row_mask = jnp.broadcast_to(mask[:, None, None], (batch, 1, heads // kv_heads) + mask.shape[1:])
    row_mask = row_mask.reshape(batch, 1, -1, mask.shape[-1])
    probs = jax.nn.softmax(jnp.where(row_mask, scores * head_dim ** -0.5, NEG_INF), axis=-1)
    out_rows = jnp.einsum("bkms,bksd->bkmd", probs.astype(v.dtype), values)
    return _from_head_major(out_rows, length), (q_rows, keys, values, row_mask, probs, out_rows)


def _attention_backward(residuals, d_out):
    """With p = softmax(s) and o = p v: dv = p^T do, dp = do v^T,
    ds = p (dp - rowsum(do * o)) / sqrt(D) (zero where masked), dq = ds k, dk = ds^T q."""
    q_rows, keys, values, row_mask, probs, out_rows = residuals
    d_rows = _to_head_major(d_out, keys.shape[1])
    dtype = values.dtype
    d_values = jnp.einsum("bkms,bkmd->bksd", probs.astype(dtype), d_rows)
    d_probs = jnp.einsum("bkmd,bksd->bkms", d_rows, values, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_rows.astype(jnp.float32) * out_rows.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = jnp.where(row_mask, probs * (d_probs - delta), 0.0) * q_rows.shape[-1] ** -0.5
    d_scores = d_scores.astype(dtype)
    d_q = jnp.einsum("bkms,bksd->bkmd", d_scores, keys)
    d_k = jnp.einsum("bkms,bkmd->bksd", d_scores, q_rows)
    return (_from_head_major(d_q, d_out.shape[1]), d_k.transpose(0, 2, 1, 3),
            d_values.transpose(0, 2, 1, 3), None)


@jax.custom_vjp
def _attention(q, k, v, mask):
    return _attention_forward(q, k, v, mask)[0]


_attention.defvjp(_attention_forward, _attention_backward)
