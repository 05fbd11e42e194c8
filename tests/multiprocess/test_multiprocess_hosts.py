"""Rows per host on one process (8 CPU devices): the host helpers reduce to the identity, the
share arithmetic splits any count into contiguous blocks that differ by at most one."""

import jax
import numpy as np
import pytest

from entropy_rl.parallel import MeshConfig, batch_sharding, make_mesh
from entropy_rl.parallel import hosts


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=4))


def test_one_process_holds_every_row(mesh):
    assert hosts.host_blocks(mesh) == [0] and hosts.host_block(mesh) == 0 and not hosts.is_multiprocess(mesh)
    assert hosts.mesh_process_count(mesh) == 1 and hosts.mesh_process_count(None) == 1
    assert hosts.host_share(7, mesh) == slice(0, 7) and hosts.host_share(7, None) == slice(0, 7)


def test_addressable_rows_of_a_batch_sharded_array(mesh):
    x = np.arange(16 * 3).reshape(16, 3)
    placed = jax.device_put(x, batch_sharding(mesh))
    np.testing.assert_array_equal(hosts.addressable_rows(placed), x)
    np.testing.assert_array_equal(hosts.global_from_host_rows(x, mesh), x)
    assert hosts.global_from_host_rows(x, mesh).sharding == batch_sharding(mesh)


def test_gathers_are_the_identity_on_one_process(mesh):
    rows = np.arange(5.0)
    assert hosts.allgather_rows(rows, mesh) is rows
    assert hosts.allgather_strings(["a", None, "é"], mesh) == ["a", None, "é"]


@pytest.mark.parametrize("items, processes", [(8, 2), (5, 2), (3, 4), (1, 3)])
def test_shares_tile_the_items_in_block_order(monkeypatch, mesh, items, processes):
    """host_share of every block of P hosts: contiguous, in order, sizes differ by at most one."""
    monkeypatch.setattr(hosts, "mesh_process_count", lambda _mesh: processes)
    shares = []
    for block in range(processes):
        monkeypatch.setattr(hosts, "host_block", lambda _mesh, block=block: block)
        shares.append(hosts.host_share(items, mesh))
    assert [s.start for s in shares] == [0] + [s.stop for s in shares[:-1]] and shares[-1].stop == items
    sizes = [s.stop - s.start for s in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
