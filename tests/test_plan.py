"""`entropy-rl plan` on a small run compiled for a TPU topology with libtpu: per-chip figures
from the shapes, every program compiled, the verdict and the command line."""

import dataclasses
import json

import numpy as np
import pytest

from entropy_rl import plan as planning
from entropy_rl.train.config import load_config

OVERRIDES = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
             "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.head_dim=8",
             "model.vocab_size=128", "model.tie_word_embeddings=false", "data.batch_size=8", "rollout.n=4",
             "rollout.max_new_tokens=16", "rollout.prompt_bucket=8", "algorithm.mini_batch_size=4",
             "algorithm.micro_batch_size=8", "model.scan_layers=true"]


@pytest.fixture(scope="module")
def tpu_plan():
    devices, hbm = planning.topology_devices("v5p:2x2x1")
    config = load_config(None, OVERRIDES, check_paths=False)
    return planning.plan(config, devices, target="v5p:2x2x1", hbm_bytes=hbm)


def test_plan_for_a_tpu_topology(tpu_plan):
    p = tpu_plan
    assert (p.chips, p.mesh, p.hbm_bytes) == (4, {"data": 1, "fsdp": 4, "tensor": 1}, planning.TPU_HBM_BYTES["v5p"])
    assert p.device_kind.startswith("TPU v5")
    # float32 parameters, every dim of 32 (embed) split over fsdp=4: a quarter per chip.
    layer = 4 * 8 * 32 * 2 + 2 * 2 * 8 * 32 + 3 * 64 * 32 + 2 * 32 + 2 * 8
    count = 2 * 128 * 32 + 2 * layer + 32
    sharded = count - 2 * (2 * 32 + 2 * 8) - 32  # norms stay replicated
    assert p.parameters == 4 * (sharded // 4 + (count - sharded))
    # Adam's two moments, its and the schedule's int32 counts, apply_if_finite's two int32 counts and a bool
    assert p.optimizer_state == 2 * p.parameters + 2 * 4 + (4 + 4 + 1)
    # KV cache: 32 rows (8 prompts x 4) over 4 chips, 2 layers x (k, v) x 2 kv heads x 8 x (8 + 16) slots,
    # float32, plus the valid mask [32, 24] (bool) split by rows.
    assert p.kv_cache == 2 * 2 * (32 // 4) * 2 * 8 * 24 * 4 + (32 // 4) * 24 + 4
    assert [m.name for m in p.programs] == list(planning.PROGRAMS)
    for m in p.programs:
        assert m.error is None and 0 < m.total < 2**30, m
        assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries
    decode = p.programs[planning.PROGRAMS.index("decode_step")]
    assert decode.aliased >= p.kv_cache - (32 // 4) * 24 - 4  # the donated cache is updated in place
    assert decode.cache_copies is not None
    assert p.verdict == "fits" and p.to_dict()["fits"]
    text = planning.format_plan(p)
    assert "verdict: fits" in text and "train_step" in text
    small = dataclasses.replace(p, hbm_bytes=int(np.median([m.total for m in p.programs])) - 1)
    first = next(m.name for m in p.programs if m.total > small.hbm_bytes)
    assert small.verdict == f"does not fit: {first} overflows first"


def test_large_copies_reads_hlo_shapes():
    hlo = ("%c = bf16[8,2,24,8]{3,2,1,0} copy(bf16[8,2,24,8]{2,3,1,0} %v)\n"
           "%d = f32[4]{0} copy(f32[4]{0} %x)\n")
    assert planning.large_copies(hlo, 8 * 2 * 24 * 8 * 2) == 1
    assert planning.large_copies(hlo, 16) == 2


def test_plan_command_line(capsys, monkeypatch, tpu_plan):
    monkeypatch.setattr(planning, "plan", lambda *args, **kwargs: tpu_plan)
    assert planning.main(["--topology", "v5p:2x2x1", "--json", *OVERRIDES]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"] == "fits" and len(printed["programs"]) == 4
    with pytest.raises(RuntimeError, match="tpu-plan"):
        planning.topology_devices("v99:1x1")


def test_multi_slice_mesh_puts_data_across_slices():
    from jax.experimental import topologies

    from entropy_rl.parallel import MeshConfig, make_mesh

    devices = topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu", num_slices=2).devices
    config = MeshConfig(slices=2, data=1, fsdp=-1)
    assert config.axis_sizes(len(devices)) == (2, 4, 1)
    mesh = make_mesh(config, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    # data index d holds slice d's 4 chips: fsdp stays within a slice (ICI), data crosses DCN.
    assert [{d.slice_index for d in mesh.devices[i].flat} for i in range(2)] == [{0}, {1}]
    with pytest.raises(ValueError, match="cannot be split into 3 slices"):
        MeshConfig(slices=3).axis_sizes(8)
