"""Sharding by names: one table maps logical axes (on parameters and batches) to mesh axes.

Parameters carry logical axis names in their `out_sharding` metadata (entropy_rl.model);
`logical_to_mesh` turns them into a PartitionSpec with LOGICAL_AXIS_RULES.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from entropy_rl.parallel.mesh import MESH_AXES

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
)

# The sampler's parameter view (`entropy_rl.rollout.params`): no weight is split over "fsdp"
# along a dim that meets the batch-split activations (the embed dim: a per-token all-gather
# of every weight; the heads and vocab dims: attention and logits split over the batch);
# only the MLP's hidden dim, which no activation outside the MLP carries, is split over
# ("fsdp", "tensor") (its collectives move activations: the input gathered over the batch,
# the down projection's partial sums reduce-scattered).
SAMPLING_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", ("fsdp", "tensor")),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
)


def logical_to_mesh(axes: tuple, mesh: jax.sharding.Mesh, shape: tuple | None = None,
                    rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for logical `axes` under `rules`.

    With `shape`, a dimension that the mesh axes do not divide evenly (e.g. 2 kv heads on
    tensor=4) stays replicated instead of failing.
    """
    table = dict(rules)
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule in {sorted(table)}")
        mesh_axes = table.get(name) if name is not None else None
        if mesh_axes is not None and shape is not None:
            names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
            size = 1
            for n in names:
                size *= mesh.shape[n]
            if shape[i] % size:
                mesh_axes = None
        spec.append(mesh_axes)
    return PartitionSpec(*spec)


def variable_sharding(variable: nnx.Variable, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """NamedSharding of a Variable from its logical axes under `rules` (replicated when it has none)."""
    axes = variable.get_metadata().get("out_sharding")
    value = variable.get_value()
    if not axes:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_mesh(axes, mesh, value.shape, rules))


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
    """The state's tree with each Variable's value replaced by its NamedSharding under `rules`."""
    return jax.tree.map(lambda v: v.replace(variable_sharding(v, mesh, rules)), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: jax.sharding.Mesh) -> nnx.Module:
    """Places every parameter of `model` on `mesh` by its logical axes (in place); returns it."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Splits dim 0 (batch) over ("data", "fsdp"); other dims replicated."""
    return NamedSharding(mesh, PartitionSpec(dict(LOGICAL_AXIS_RULES)["batch"]))


def constrain(x: jax.Array, axes: tuple) -> jax.Array:
    """with_sharding_constraint by logical axes when tracing under `jax.set_mesh(mesh)`
    with our mesh axes; the identity otherwise (single device, no mesh context)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh(axes, mesh, x.shape))


class MeshBound:
    """A jitted function traced, compiled and called under `jax.set_mesh(mesh)`, so the
    model's `constrain` calls shard activations by logical axis instead of being no-ops.

    `__call__` runs the program; `lower` / `trace` give its lowering (e.g. to count
    sharding constraints or to compile for another topology) under the same mesh.
    """

    def __init__(self, jitted: Callable, mesh: jax.sharding.Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.jitted.lower(*args, **kwargs)

    def trace(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.jitted.trace(*args, **kwargs)
