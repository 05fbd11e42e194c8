"""Device mesh with named axes ("data", "fsdp", "tensor") and multi-host start-up."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; -1 (at most one) takes all remaining devices.

    data: pure data parallelism (parameters replicated); fsdp: data parallelism with
    parameters, gradients and optimizer state sharded; tensor: heads / mlp / vocab split.
    slices > 1: several TPU slices joined over the data-center network (DCN), like MaxText's
    hybrid mesh: data, fsdp and tensor describe one slice (ICI), and the mesh's "data" axis
    is slices x data, its outer factor across the slices.
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    slices: int = 1

    def axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) of the whole mesh with -1 resolved so that the product is num_devices."""
        if self.slices < 1 or num_devices % self.slices:
            raise ValueError(f"{num_devices} devices cannot be split into {self.slices} slices")
        data, fsdp, tensor = self.slice_axis_sizes(num_devices // self.slices)
        return data * self.slices, fsdp, tensor

    def slice_axis_sizes(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) within one slice of num_devices, -1 resolved."""
        sizes = [self.data, self.fsdp, self.tensor]
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(f"mesh sizes must be positive or one -1, got {self}")
        known = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices cannot be split as {self}")
            sizes[sizes.index(-1)] = num_devices // known
        if int(np.prod(sizes)) != num_devices:
            raise ValueError(f"mesh {self} needs {int(np.prod(sizes))} devices, "
                             f"{num_devices} are available")
        return tuple(sizes)


def make_mesh(mesh_config: MeshConfig = MeshConfig(), devices=None) -> jax.sharding.Mesh:
    """A jax Mesh over `devices` (default: all, topology-aware order) with axes
    ("data", "fsdp", "tensor") in Auto mode (shardings propagate through jit). With
    slices > 1 the devices' `slice_index` places the data axis's outer factor across slices."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_config.axis_sizes(len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if mesh_config.slices == 1:
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=axis_types)
    from jax.experimental import mesh_utils

    in_slice = mesh_config.slice_axis_sizes(len(devices) // mesh_config.slices)
    grid = mesh_utils.create_hybrid_device_mesh(in_slice, (mesh_config.slices, 1, 1), devices)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def _num_processes_from_env() -> int:
    """Process count announced by the launcher (JAX, SLURM, Open MPI, TPU pod), else 1."""
    for key in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if key in os.environ:
            return int(os.environ[key])
    return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) or 1


def initialize_distributed() -> bool:
    """Calls jax.distributed.initialize() when several processes are configured.

    Several processes are recognised by JAX_COORDINATOR_ADDRESS, or a process count > 1 in
    JAX_NUM_PROCESSES, SLURM_NTASKS, OMPI_COMM_WORLD_SIZE or TPU_WORKER_HOSTNAMES (which
    jax.distributed.initialize() then auto-detects). Call it before any other jax call.
    Returns True when the distributed runtime was started.
    """
    if "JAX_COORDINATOR_ADDRESS" not in os.environ and _num_processes_from_env() <= 1:
        return False
    jax.distributed.initialize()
    return True
