"""Device mesh with named axes ("data", "fsdp", "tensor") and multi-host start-up."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from entropy_rl.parallel.peers import watch_peers

MESH_AXES = ("data", "fsdp", "tensor")
_LAUNCHER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


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


def distributed_arguments(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The keyword arguments of jax.distributed.initialize for the launcher that started this
    process, or None when it runs alone (env: default os.environ).

    - a plain launcher (`entropy-rl launch`, a GPU cluster script): JAX_COORDINATOR_ADDRESS
      ("host:port" of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID, passed explicitly
      (jax reads only the address from the environment);
    - SLURM (srun: SLURM_NTASKS > 1), Open MPI (mpirun: OMPI_COMM_WORLD_SIZE > 1) and TPU pod
      slices (TPU_WORKER_HOSTNAMES with several hosts): {} (jax detects these itself).
    """
    env = os.environ if env is None else env
    if "JAX_COORDINATOR_ADDRESS" in env or "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env:
        missing = [key for key in _LAUNCHER_VARIABLES if not env.get(key)]
        if missing:
            raise ValueError(f"multi-process start-up: {', '.join(missing)} not set; a plain launcher sets all of "
                             f"{', '.join(_LAUNCHER_VARIABLES)}")
        num_processes, process_id = (_integer(env, key) for key in _LAUNCHER_VARIABLES[1:])
        if not 0 <= process_id < num_processes:
            raise ValueError(f"multi-process start-up: JAX_PROCESS_ID={process_id} is not in "
                             f"[0, JAX_NUM_PROCESSES={num_processes})")
        if num_processes == 1:
            return None
        return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": num_processes,
                "process_id": process_id}
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if (_integer(env, "SLURM_NTASKS", 1) > 1 or _integer(env, "OMPI_COMM_WORLD_SIZE", 1) > 1
            or len(hosts) > 1):
        return {}
    return None


def _integer(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    try:
        return int(env[key]) if key in env or default is None else default
    except ValueError:
        raise ValueError(f"multi-process start-up: {key}={env[key]!r} is not an integer") from None


def initialize_distributed() -> bool:
    """Starts jax's distributed runtime when this process is one of several (see
    `distributed_arguments`); does nothing on one process or when it is already started.

    Call it before any other jax call. Returns True when it started the runtime; then every
    process also watches the others' signs of life, so a dead one is named in one line by
    the survivors (`parallel/peers.py`).
    """
    arguments = distributed_arguments()
    if arguments is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**arguments)
    watch_peers()
    return True
