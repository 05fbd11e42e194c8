"""Rows per host: which rows of a batch-sharded array each JAX process holds, and the small
cross-host exchanges of a multi-host run (one process per TPU host / GPU node).

A batch split over the mesh's ("data", "fsdp") axes gives each process one contiguous block
of rows (the mesh lists devices process by process). `host_block` finds this process's
block; the host builds its block with `jax.make_array_from_process_local_data` and reads
back only `addressable_rows`, so no process fetches rows that live on another one. Small
per-row results (rewards, answers) are exchanged with `allgather_rows` / `allgather_strings`.
With a mesh of one process's devices (one process, or `--mesh none`-like local runs on
several) every function here is the identity or a plain copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from entropy_rl.parallel.sharding import batch_sharding


def _batch_shards(mesh: jax.sharding.Mesh) -> int:
    """Number of pieces the batch dim is split into on `mesh`."""
    axes = batch_sharding(mesh).spec[0]
    return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))


def mesh_process_count(mesh: jax.sharding.Mesh | None) -> int:
    """How many processes own devices of `mesh` (1 without a mesh)."""
    return 1 if mesh is None else len({device.process_index for device in mesh.devices.flat})


def is_multiprocess(mesh: jax.sharding.Mesh | None) -> bool:
    """Whether `mesh` spans the devices of several processes (then every process owns some)."""
    processes = mesh_process_count(mesh)
    if processes > 1 and processes != jax.process_count():
        raise ValueError(f"a mesh over {processes} of the {jax.process_count()} processes: use every process's "
                         "devices, or only this process's")
    return processes > 1


def host_blocks(mesh: jax.sharding.Mesh) -> list[int]:
    """blocks[p]: the position of process p's rows among the batch's per-process blocks.

    Raises ValueError when the batch axes do not give every process one contiguous block of
    the same size (e.g. a "tensor" axis spanning processes while the batch does not).
    """
    shards, processes = _batch_shards(mesh), mesh_process_count(mesh)
    rows_of: dict[int, set[int]] = {}
    for device, index in batch_sharding(mesh).devices_indices_map((shards,)).items():
        rows_of.setdefault(device.process_index, set()).update(range(shards)[index[0]])
    per_host = shards // processes
    starts = {}
    for process, rows in rows_of.items():
        if shards % processes or len(rows) != per_host or max(rows) - min(rows) + 1 != per_host:
            raise ValueError(f"the mesh {dict(mesh.shape)} does not split the batch into one contiguous block of "
                             f"rows per process ({processes} processes; process {process} holds batch shards "
                             f"{sorted(rows)} of {shards}): make data x fsdp a multiple of the process count")
        starts[process] = min(rows)
    order = sorted(starts, key=starts.get)
    return [order.index(p) for p in range(processes)]


def host_block(mesh: jax.sharding.Mesh | None) -> int:
    """This process's block index (0 when the mesh is one process's, or without a mesh)."""
    if not is_multiprocess(mesh):
        return 0
    return host_blocks(mesh)[jax.process_index()]


def host_share(num_items: int, mesh: jax.sharding.Mesh | None) -> slice:
    """This host's contiguous share of `num_items` items (prompts of a step) in block order:
    block b gets items [b * k + min(b, r), ...) with num_items = k * P + r (sizes differ by
    at most one). The whole range when the mesh is one process's."""
    processes = mesh_process_count(mesh)
    block = host_block(mesh)
    size, extra = divmod(num_items, processes)
    start = block * size + min(block, extra)
    return slice(start, start + size + (block < extra))


def global_from_host_rows(local: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    """The batch-sharded global array whose block of rows on this process is `local` (every
    process passes the same number of rows)."""
    sharding = batch_sharding(mesh)
    shape = (local.shape[0] * mesh_process_count(mesh), *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def addressable_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array (its block, in order), read from its own
    devices only: no transfer from another process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    pieces = {}
    for shard in x.addressable_shards:
        rows = shard.index[0]
        pieces.setdefault((rows.start or 0, rows.stop), shard)
    ranges = sorted(pieces)
    if any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
        raise ValueError(f"this process's rows {ranges} of an array of shape {x.shape} are not one block")
    return np.concatenate([np.asarray(pieces[r].data) for r in ranges])


def allgather_rows(local: np.ndarray, mesh: jax.sharding.Mesh | None) -> np.ndarray:
    """Every host's `local` rows concatenated in block order (the same on every host); the
    hosts may hold different numbers of rows. `local` itself on one process."""
    if not is_multiprocess(mesh):
        return local
    local = np.asarray(local)
    counts = multihost_utils.process_allgather(np.int64(local.shape[0]))
    padded = np.zeros((int(counts.max()), *local.shape[1:]), local.dtype)
    padded[:local.shape[0]] = local
    gathered = multihost_utils.process_allgather(padded)  # [P, max rows, ...] by process index
    order = np.argsort(host_blocks(mesh))
    return np.concatenate([gathered[p, :counts[p]] for p in order])


def allgather_strings(local: Sequence[str | None], mesh: jax.sharding.Mesh | None) -> list[str | None]:
    """`allgather_rows` of a list of optional strings (sent as UTF-8 bytes)."""
    if not is_multiprocess(mesh):
        return list(local)
    encoded = [None if s is None else s.encode() for s in local]
    lengths = np.asarray([-1 if b is None else len(b) for b in encoded], np.int64)
    width = int(multihost_utils.process_allgather(np.int64(max(lengths, default=0))).max())
    data = np.zeros((len(local), max(width, 1)), np.uint8)
    for row, b in enumerate(encoded):
        if b:
            data[row, :len(b)] = np.frombuffer(b, np.uint8)
    lengths, data = allgather_rows(lengths, mesh), allgather_rows(data, mesh)
    return [None if n < 0 else data[row, :n].tobytes().decode() for row, n in enumerate(lengths)]


def allgather_host_values(x: jax.Array) -> np.ndarray:
    """A small global array's whole value on every host (a plain fetch when this process
    holds all of it)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
