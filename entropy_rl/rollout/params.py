"""The sampler's own view of the parameters: the weights in the compute dtype, placed for decoding.

Training keeps float32 master weights with the embed dim split over "fsdp"
(`LOGICAL_AXIS_RULES`); a decode step reading them all-gathers every weight (and converts it
to the compute dtype) for a few rows' worth of work. `sampling_params` makes, in one
compiled program and device to device (no host round trip),

    view[w] = w.astype(dtype)   for every weight matrix (ndim >= 2: projections, embedding,
                                lm_head, biases [heads, head_dim]): the very cast the model
                                applies before using them, so the view computes the same;
    view[w] = w                 for the 1-D RMSNorm scales (the model multiplies them in float32),

each placed by `SAMPLING_AXIS_RULES`: the embed dim replicated, the MLP's hidden dim split
over ("fsdp", "tensor"), heads and vocab over "tensor" (where a dim does not divide, it is
replicated, as in `logical_to_mesh`). A decode step then moves only activations: its
collective bytes are 0.004x the training parameters' for a 2-layer model compiled for TPU
v5p:2x2x1 (`tools/bench/sampling_view.py`; heads or vocab split over "fsdp" would meet the
batch-split attention and logits, and XLA then all-gathers those weights).

Memory per chip, bf16 (`itemsize(dtype)` per weight): the MLP / (fsdp x tensor), attention,
embedding and lm_head / tensor. Qwen3-8B: 5.45 GiB on v5p-64 (fsdp=32), 1.60 GiB with
fsdp=8 x tensor=4 (the training parameters, float32: 0.95 GiB on both).

`generate` makes the view at the start of each call (`SamplingConfig.sampling_copy`) and
drops it when it returns: the training parameters are only read (never donated or changed),
each rollout samples from the current training parameters, and the view takes no memory
during the update.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from entropy_rl.parallel.sharding import SAMPLING_AXIS_RULES, state_shardings


def view_dtype(value: jax.Array, dtype) -> jnp.dtype:
    """The dtype of a parameter in the view: `dtype` for a floating matrix (ndim >= 2), else its own."""
    if value.ndim >= 2 and jnp.issubdtype(value.dtype, jnp.floating):
        return jnp.dtype(dtype)
    return value.dtype


def sampling_shardings(params: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """The view's NamedSharding of each parameter (`SAMPLING_AXIS_RULES`), as a tree like `params`."""
    return state_shardings(params, mesh, SAMPLING_AXIS_RULES)


def sampling_params(params: nnx.State, dtype, mesh: jax.sharding.Mesh | None) -> nnx.State:
    """The sampling view of the training parameters `params` (an nnx.State; see the module doc).

    dtype: the model's compute dtype; mesh: the run's mesh (None: one device, the placement
    kept). Returns `params` itself when it already is the view (every weight in its view
    dtype and placement, e.g. float32 weights on one device), else a new State of new
    arrays; `params` is left as it was.
    """
    leaves, treedef = jax.tree.flatten(params)
    dtypes = tuple(view_dtype(x, dtype) for x in leaves)
    if mesh is None:
        shardings = tuple(x.sharding for x in leaves)
    else:
        shardings = tuple(jax.tree.leaves(sampling_shardings(params, mesh)))
    if all(x.dtype == d and x.sharding.is_equivalent_to(s, x.ndim) for x, d, s in zip(leaves, dtypes, shardings)):
        return params
    return jax.tree.unflatten(treedef, _view_program(dtypes, shardings)(leaves))


@functools.lru_cache(maxsize=8)
def _view_program(dtypes: tuple[jnp.dtype, ...], shardings: tuple[NamedSharding, ...]):
    """One compiled program: leaves -> [leaf.astype(dtype)] placed on `shardings`."""
    def cast(leaves):
        return [x.astype(d) for x, d in zip(leaves, dtypes)]
    return jax.jit(cast, out_shardings=list(shardings))
