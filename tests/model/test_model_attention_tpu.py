"""The splash attention path compiles for a TPU (libtpu ahead-of-time, from this CPU host)
at 16k tokens, under shard_map on a 4-chip v5p mesh, with memory linear in T."""


import pytest
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec

from entropy_rl.model.attention import causal_attention
from entropy_rl.parallel.mesh import MESH_AXES

HEADS, KV_HEADS, HEAD_DIM, BATCH = 8, 2, 128, 2  # Qwen3's head_dim; 4 query heads per kv head


def tpu_mesh() -> jax.sharding.Mesh:
    """fsdp=2 x tensor=2 over the 4 chips of a v5p:2x2x1 topology description."""
    devices = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu").devices
    return jax.sharding.Mesh(np.array(devices).reshape(1, 2, 2), MESH_AXES)


def compiled_gradient(mesh: jax.sharding.Mesh, length: int):
    """The TPU executable of d/d(q, k, v) of sum(splash attention) for bfloat16 [B, T, H, D]
    inputs split over batch (fsdp) and heads (tensor)."""
    def spec(*axes, shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, PartitionSpec(*axes)))

    q = spec("fsdp", None, "tensor", None, shape=(BATCH, length, HEADS, HEAD_DIM))
    kv = spec("fsdp", None, "tensor", None, shape=(BATCH, length, KV_HEADS, HEAD_DIM))
    mask = spec("fsdp", None, shape=(BATCH, length), dtype=jnp.int32)

    def loss(q, k, v, attention_mask):
        out = causal_attention(q, k, v, attention_mask, 512, "splash")
        return jnp.sum(out.astype(jnp.float32))

    # The suite sets jax_default_matmul_precision="highest" (conftest.py) for its float32
    # references; Mosaic rejects that contract precision on bfloat16 operands.
    with jax.set_mesh(mesh), jax.default_matmul_precision("default"):
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, mask).compile()


@pytest.mark.slow
def test_splash_attention_compiles_for_tpu_with_memory_linear_in_length():
    mesh = tpu_mesh()
    temp = {}
    for length in (8192, 16384):
        compiled = compiled_gradient(mesh, length)
        assert "tpu_custom_call" in compiled.as_text()  # the Mosaic (Pallas TPU) kernels
        temp[length] = compiled.memory_analysis().temp_size_in_bytes
    # Measured per chip: 4k 17 MiB, 8k 33 MiB, 16k 81 MiB (T^2 would quadruple per doubling);
    # dense attention would keep the float32 probabilities [1, 4, 16k, 16k] per chip: 4 GiB.
    assert temp[16384] < 3 * temp[8192]
    assert temp[16384] < 128 * 2**20
