"""Sharded Qwen on 8 simulated CPU devices: same logits, parameters really distributed."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from entropy_rl.model import Qwen, load_hf, save_hf, tiny_config
from entropy_rl.parallel import (LOGICAL_AXIS_RULES, MeshConfig, batch_sharding,
                                 initialize_distributed, logical_to_mesh, make_mesh, shard_model)

CONFIG = tiny_config(attention_bias=True)  # hidden 64, 4 heads, 2 kv heads, head_dim 16, mlp 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    save_hf(Qwen(CONFIG, rngs=nnx.Rngs(0)), str(path))
    return str(path)


def _forward(model, input_ids, attention_mask):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))(state, input_ids, attention_mask)


def _batch():
    rng = np.random.default_rng(0)
    input_ids = rng.integers(1, CONFIG.vocab_size, (8, 12)).astype(np.int32)
    attention_mask = np.ones_like(input_ids)
    attention_mask[::2, :4] = 0  # left padding
    attention_mask[1::4, 9:] = 0  # right padding
    return input_ids, attention_mask


# Per-device shard shapes: embed -> fsdp, heads / kv_heads / mlp / vocab -> tensor.
EXPECTED_SHARDS = {
    (8, 1): {("embed_tokens",): (256, 8), ("lm_head",): (256, 8),
             ("layers", 0, "self_attn", "q_proj"): (4, 16, 8),
             ("layers", 0, "self_attn", "k_proj"): (2, 16, 8),
             ("layers", 0, "self_attn", "o_proj"): (8, 4, 16),
             ("layers", 0, "self_attn", "q_bias"): (4, 16),
             ("layers", 0, "mlp", "gate_proj"): (128, 8),
             ("layers", 0, "mlp", "down_proj"): (8, 128),
             ("layers", 0, "input_layernorm", "weight"): (64,)},
    (4, 2): {("embed_tokens",): (128, 16), ("lm_head",): (128, 16),
             ("layers", 0, "self_attn", "q_proj"): (2, 16, 16),
             ("layers", 0, "self_attn", "k_proj"): (1, 16, 16),
             ("layers", 0, "self_attn", "o_proj"): (16, 2, 16),
             ("layers", 0, "self_attn", "q_bias"): (2, 16),
             ("layers", 0, "mlp", "gate_proj"): (64, 16),
             ("layers", 0, "mlp", "down_proj"): (16, 64),
             ("layers", 0, "input_layernorm", "weight"): (64,)},
}


def _shard_shapes(model):
    return {path: var.get_value().addressable_shards[0].data.shape
            for path, var in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("fsdp,tensor", [(8, 1), (4, 2)])
@pytest.mark.slow
def test_sharded_forward_equals_single_device(checkpoint, fsdp, tensor):
    assert jax.device_count() == 8
    input_ids, attention_mask = _batch()
    single = np.asarray(_forward(load_hf(checkpoint), input_ids, attention_mask))
    mesh = make_mesh(MeshConfig(fsdp=fsdp, tensor=tensor))
    model = load_hf(checkpoint, mesh=mesh)
    shapes = _shard_shapes(model)
    for path, shard_shape in EXPECTED_SHARDS[fsdp, tensor].items():
        assert shapes[path] == shard_shape, path
    batch = jax.device_put((input_ids, attention_mask), batch_sharding(mesh))
    with jax.set_mesh(mesh):  # activations constrained to the batch split
        sharded = _forward(model, *batch)
    expected = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, "tensor"))
    assert sharded.sharding.is_equivalent_to(expected, 3)
    np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-5)
    # shard_model places an unsharded model exactly like load_hf(mesh=...) does.
    resharded = shard_model(load_hf(checkpoint), mesh)
    assert _shard_shapes(resharded) == shapes
    for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.state(resharded)),
                              nnx.to_flat_state(nnx.state(model))):
        assert a.get_value().sharding.is_equivalent_to(b.get_value().sharding, a.get_value().ndim)
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))


def test_sharded_blockwise_attention_equals_single_device_dense(checkpoint):
    """12 tokens in blocks of 4 under fsdp=4 x tensor=2 (batch and kv heads split) against
    dense attention on one device, at every real token."""
    input_ids, attention_mask = _batch()
    single = np.asarray(_forward(load_hf(checkpoint), input_ids, attention_mask))
    mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
    model = load_hf(checkpoint, mesh=mesh, attention_block_size=4)
    batch = jax.device_put((input_ids, attention_mask), batch_sharding(mesh))
    with jax.set_mesh(mesh):
        sharded = np.asarray(_forward(model, *batch))
    real = attention_mask == 1
    np.testing.assert_allclose(sharded[real], single[real], atol=1e-5)


def test_mesh_config_and_rules():
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert batch_sharding(mesh).spec == PartitionSpec(("data", "fsdp"))
    with pytest.raises(ValueError, match="needs 6 devices, 8 are available"):
        make_mesh(MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match="cannot be split"):
        make_mesh(MeshConfig(data=3))
    with pytest.raises(ValueError, match="one -1"):
        MeshConfig(data=-1, fsdp=-1).axis_sizes(8)
    # 2 kv heads cannot be split 4 ways: that dim stays replicated instead of failing.
    tp4 = make_mesh(MeshConfig(fsdp=2, tensor=4))
    assert logical_to_mesh(("embed", "kv_heads", "head_dim"), tp4, (64, 2, 16)) == \
        PartitionSpec("fsdp", None, None)
    assert logical_to_mesh(("embed", "heads", "head_dim"), tp4, (64, 4, 16)) == \
        PartitionSpec("fsdp", "tensor", None)
    with pytest.raises(KeyError, match="'experts' has no rule"):
        logical_to_mesh(("experts",), tp4)
    assert {name for name, _ in LOGICAL_AXIS_RULES} >= {"embed", "mlp", "heads", "kv_heads", "vocab"}


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(key, raising=False)
    assert initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert initialize_distributed() is False
