"""`entropy-rl plan` on a small run compiled for a TPU topology with libtpu: per-chip figures
from the shapes, the sampler's own programs (refill slots, or the static schedule) compiled,
the decode loop free of cache copies, the verdict and the command line."""

import dataclasses
import json

import numpy as np
import pytest

from entropy_rl import plan as planning
from entropy_rl.train.config import load_config

# one worker builds the module's compiled fixture (`--dist loadgroup`), not both
pytestmark = pytest.mark.xdist_group("plan")

# head_dim 128 (a TPU lane width, as the Qwen models'): each layer's cache is the largest
# array of a decode step, so a copy of its size is a copy of the cache.
HEAD_DIM = 128
OVERRIDES = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
             "model.num_attention_heads=4", "model.num_key_value_heads=2", f"model.head_dim={HEAD_DIM}",
             "model.vocab_size=128", "model.tie_word_embeddings=false", "data.batch_size=8", "rollout.n=4",
             "rollout.max_new_tokens=16", "rollout.prompt_bucket=8", "algorithm.mini_batch_size=4",
             "algorithm.micro_batch_size=8", "model.scan_layers=true", "rollout.max_slots=8"]


@pytest.fixture(scope="module")
def tpu_plan():
    devices, hbm = planning.topology_devices("v5p:2x2x1")
    config = load_config(None, OVERRIDES, check_paths=False)
    return planning.plan(config, devices, target="v5p:2x2x1", hbm_bytes=hbm)


@pytest.mark.slow
def test_plan_for_a_tpu_topology(tpu_plan):
    p = tpu_plan
    assert (p.chips, p.mesh, p.hbm_bytes) == (4, {"data": 1, "fsdp": 4, "tensor": 1}, planning.TPU_HBM_BYTES["v5p"])
    assert p.device_kind.startswith("TPU v5")
    # float32 parameters, every dim of 32 (embed) split over fsdp=4: a quarter per chip.
    layer = 4 * HEAD_DIM * 32 * 2 + 2 * 2 * HEAD_DIM * 32 + 3 * 64 * 32 + 2 * 32 + 2 * HEAD_DIM
    count = 2 * 128 * 32 + 2 * layer + 32
    sharded = count - 2 * (2 * 32 + 2 * HEAD_DIM) - 32  # norms stay replicated
    assert p.parameters == 4 * (sharded // 4 + (count - sharded))
    # Adam's two moments, its and the schedule's int32 counts, apply_if_finite's two int32 counts and a bool
    assert p.optimizer_state == 2 * p.parameters + 2 * 4 + (4 + 4 + 1)
    # The refill scheduler decodes the 32 rows (8 prompts x 4) through rollout.max_slots = 8 slots, 2 per
    # chip: 2 layers x (k, v) x 2 slots x 2 kv heads x 128 x 64 cache slots (8 + 16 rounded up to whole
    # 64-slot chunks of the decode attention), float32, plus the valid mask [2, 64] (bool) and the int32 length.
    assert {k: p.shapes[k] for k in ("scheduler", "rollout_rows", "slots", "cache_slots")} == {
        "scheduler": "refill", "rollout_rows": 32, "slots": 8, "cache_slots": 64}
    assert p.kv_cache == 2 * 2 * 2 * 2 * HEAD_DIM * 64 * 4 + 2 * 64 + 4
    # The sampler reads its parameter view (rollout.sampling_copy): the MLP split over fsdp, every
    # other weight whole on each chip (tensor=1); float32 here, the compute dtype of this config.
    mlp = 2 * 3 * 64 * 32
    assert p.sampling_view == 4 * (count - mlp + mlp // 4)
    # While the sampler runs, the training parameters and Adam stay on the chip; while the
    # no-grad forward runs, Adam does; the train step has everything among its arguments.
    assert {m.name: m.resident for m in p.programs} == {
        **{name: p.parameters + p.optimizer_state for name in planning.REFILL_PROGRAMS},
        "no_grad_logprobs": p.optimizer_state, "train_step": 0}
    assert [m.name for m in p.programs] == [*planning.REFILL_PROGRAMS, *planning.TRAIN_PROGRAMS]
    for m in p.programs:
        assert m.error is None and 0 < m.total < 2**30, m
        assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries and m.peak == m.total + m.resident
    programs = {m.name: m for m in p.programs}
    assert programs["empty_slots"].outputs >= p.kv_cache
    for name in ("refill_prefill", "refill_decode"):  # the donated slot state is updated in place
        assert programs[name].aliased >= p.kv_cache, name
    # The TPU decode loop reads and writes the cache in place: no copy of a layer's cache per step
    # (the CPU's elementwise attention made 4 here: each layer's keys as float32 and its values).
    assert programs["refill_decode"].cache_copies == 0
    assert p.verdict == "fits" and p.to_dict()["fits"]
    assert all(m.flops > 0 for m in p.programs if m.name in planning.TRAIN_PROGRAMS)
    assert all(m.flops is None for m in p.programs if m.name in planning.REFILL_PROGRAMS)  # loops of run-time length
    text = planning.format_plan(p)
    assert "verdict: fits" in text and "train_step" in text and "(8 slots in all)" in text
    small = dataclasses.replace(p, hbm_bytes=int(np.median([m.peak for m in p.programs])) - 1)
    first = next(m.name for m in p.programs if m.peak > small.hbm_bytes)
    assert small.verdict == f"does not fit: {first} overflows first"


@pytest.mark.slow
def test_static_schedule_plans_prefill_growth_and_decode():
    """Without a slot limit all 32 rows decode at once: the static sampler's programs, the
    cache grown between its decode segments (rollout.decode_segments=4 of the 128 response
    slots: caches of 64, 128 and 192 slots, whole chunks of the decode attention)."""
    from flax import nnx

    from entropy_rl.model import Qwen
    from entropy_rl.parallel import make_mesh
    from entropy_rl.parallel.sharding import state_shardings

    devices, _ = planning.topology_devices("v5p:2x2x1")
    config = load_config(None, [*OVERRIDES, "rollout.max_slots=0", "rollout.max_new_tokens=128",
                                "rollout.response_bucket=128", "rollout.decode_segments=4"], check_paths=False)
    mesh = make_mesh(config.mesh, devices=devices)
    model_config = planning._policy_config(config, None)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen(model_config, rngs=nnx.Rngs(0))))
    params = planning._abstract(params, state_shardings(params, mesh))
    programs, shapes, kv_cache = planning._sampler_programs(config, model_config, graphdef, params, mesh, 8, 0)
    assert [m.name for m in programs] == list(planning.STATIC_PROGRAMS)
    assert shapes == {"scheduler": "static", "rollout_rows": 32, "slots": 32, "cache_slots": 192}
    # every row's cache at its last segment's 192 slots, 8 rows per chip
    assert kv_cache == 2 * 2 * 8 * 2 * HEAD_DIM * 192 * 4 + 8 * 192 + 4
    grow = programs[1]
    layer_before, layer_after = (2 * 8 * 2 * HEAD_DIM * slots * 4 for slots in (128, 192))
    assert grow.arguments == layer_before  # one layer's (k, v) at a time, from 128 slots to 192
    assert layer_after <= grow.outputs < layer_after + 1024
    assert programs[2].cache_copies == 0 and programs[2].aliased >= kv_cache


def test_loop_bodies_keep_loop_copies_only():
    hlo = """HloModule m

%fused (p: f32[64]) -> f32[64] {
  %p = f32[64]{0} parameter(0)
  ROOT %copy.1 = f32[64]{0} copy(%p)
}

%body (s: f32[64]) -> f32[64] {
  %s = f32[64]{0} parameter(0)
  %copy.2 = f32[64]{0} copy(%s)
  ROOT %f = f32[64]{0} fusion(%copy.2), kind=kLoop, calls=%fused
}

%cond (c: f32[64]) -> pred[] {
  %c = f32[64]{0} parameter(0)
  ROOT %t = pred[] constant(true)
}

ENTRY %main (x: f32[64]) -> f32[64] {
  %x = f32[64]{0} parameter(0)
  %copy.3 = f32[64]{0} copy(%x)
  ROOT %w = f32[64]{0} while(%copy.3), condition=%cond, body=%body
}
"""
    assert planning.large_copies(hlo, 256) == 3  # the entry's, the body's and the fusion's
    body = planning.loop_bodies(hlo)
    assert "%body (" in body and "%cond (" in body and "ENTRY" not in body and "%fused (" not in body
    assert planning.large_copies(body, 256) == 1


def test_large_copies_reads_hlo_shapes():
    hlo = ("%c = bf16[8,2,24,8]{3,2,1,0} copy(bf16[8,2,24,8]{2,3,1,0} %v)\n"
           "%d = f32[4]{0} copy(f32[4]{0} %x)\n")
    assert planning.large_copies(hlo, 8 * 2 * 24 * 8 * 2) == 1
    assert planning.large_copies(hlo, 16) == 2


@pytest.mark.slow
def test_plan_command_line(capsys, monkeypatch, tpu_plan):
    monkeypatch.setattr(planning, "plan", lambda *args, **kwargs: tpu_plan)
    assert planning.main(["--topology", "v5p:2x2x1", "--json", *OVERRIDES]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"] == "fits" and len(printed["programs"]) == 5
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


@pytest.mark.parametrize("config_file, preset, chips, slots", [
    ("stapo_qwen3_8b.yaml", "qwen3-8b", 32, 384),  # v5p-64: 12 per chip in 28 GB
    ("stapo_qwen3_14b.yaml", "qwen3-14b", 32, 320),  # v5p-64: 10 per chip in 28 GB
    ("sent_r1_distill_qwen_1.5b.yaml", "deepseek-r1-distill-qwen-1.5b", 16, 1024),  # v4-32: max_slots
    ("sent_r1_distill_qwen_1.5b.yaml", "deepseek-r1-distill-qwen-1.5b", 4, 484),  # v5p-8: 121 per chip in 8 GB
])
def test_paper_configs_slot_counts(config_file, preset, chips, slots):
    """The slots the paper configs' comments state, on the meshes they name (one batch shard per chip)."""
    from entropy_rl.model import QwenConfig
    from entropy_rl.rollout.refill import kv_bytes_per_slot, slot_count

    config = load_config(f"configs/paper/{config_file}", check_paths=False)
    r = config.rollout
    sampling = r.sampling_config(stop_token_ids=(), pad_token_id=0)
    model_config = QwenConfig.preset(preset, dtype=config.model.dtype)
    cache_slots = r.prompt_bucket + r.max_new_tokens  # max_new_tokens is a multiple of response_bucket
    rows = config.data.batch_size * r.n
    assert slot_count(sampling, model_config, cache_slots, rows, chips) == slots
    assert slots // chips * kv_bytes_per_slot(model_config, cache_slots) <= r.kv_cache_budget_gb * 1e9


def test_auto_attention_follows_the_planned_platform():
    """Under a TPU topology's mesh, "auto" attention resolves as on a TPU (splash) though this
    host is a CPU: a plan compiles the kernels the planned chips would run."""
    import jax

    from entropy_rl.model.attention import resolve_implementation
    from entropy_rl.parallel import MeshConfig, make_mesh

    devices, _ = planning.topology_devices("v5p:2x2x1")
    with jax.set_mesh(make_mesh(MeshConfig(), devices=devices)):
        assert resolve_implementation("auto", 1024, 512, "bfloat16") == "splash"
    assert resolve_implementation("auto", 1024, 512, "bfloat16") == "blockwise"  # this CPU host


def test_program_flops_counts_every_iteration_of_a_scan():
    """XLA's cost analysis counts a loop body once; `program_flops` unrolls the scans first:
    3 iterations of a 64 x 64 matrix product are 3 x 2 x 64^3 operations."""
    import jax
    import jax.numpy as jnp

    from entropy_rl.parallel import MeshConfig, make_mesh
    from entropy_rl.parallel.sharding import MeshBound

    def cubes(x):
        return jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=3)[0]

    program = MeshBound(jax.jit(cubes), make_mesh(MeshConfig(), devices=jax.devices()[:1]))
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    assert program.lower(x).cost_analysis()["flops"] == pytest.approx(2 * 64**3, rel=1e-4)  # the body once
    assert planning.program_flops(program, x) == pytest.approx(3 * 2 * 64**3, rel=1e-4)


@pytest.fixture(scope="module")
def packed_plan():
    """The update programs of the small run with packing on and responses of median 16 and 64
    tokens (cap 256, prompts of 8), so most of the padded update is padding."""
    devices, hbm = planning.topology_devices("v5p:2x2x1")
    config = load_config(None, [*OVERRIDES, "rollout.max_new_tokens=256", "rollout.response_bucket=256",
                                "algorithm.packing=auto"], check_paths=False)
    return planning.plan(config, devices, target="v5p:2x2x1", hbm_bytes=hbm, response_medians=[16, 64],
                         update_only=True)


@pytest.mark.slow
def test_plan_compiles_the_packed_update_beside_the_padded_one(packed_plan):
    """The padded programs once, the packed ones per length model, all with their memory and
    FLOPs (counted on dense-attention twins: splash is a Pallas kernel)."""
    p = packed_plan
    packed = [f"packed_{name}" for name in planning.TRAIN_PROGRAMS]
    assert [m.name for m in p.programs] == [*planning.TRAIN_PROGRAMS, *packed, *packed]  # update_only: no sampler
    assert [m.lengths for m in p.programs] == [None, None, "median 16", "median 16", "median 64", "median 64"]
    for m in p.programs:
        assert m.error is None and 0 < m.total < 2**30 and m.flops > 0, m
    short, long = p.packing
    assert (short["rows"], short["response_median"], short["response_sigma"]) == (32, 16, planning.LENGTH_SIGMA)
    assert short["useful_fraction_padded"] < long["useful_fraction_padded"] < 0.5
    for k in p.packing:
        assert k["useful_fraction_padded"] < k["useful_fraction_packed"] <= 1
        # the rows: micro-batches x rows x tokens, the padded row's 263 tokens rounded up to
        # whole 128-token blocks, rows split over the 4 chips
        micro, rows, tokens = k["rollout_layout"]
        assert tokens == 384 and rows % 4 == 0
    # fewer FLOPs packed; the rows (8 x 384 tokens: a micro-batch's budget of 8 padded rows of
    # 263, rounded up to the 4 chips) hold either length model's 32 responses
    assert all(0 < short["flops_ratio"][name] <= long["flops_ratio"][name] < 1 for name in planning.TRAIN_PROGRAMS)
    assert short["rollout_layout"] == long["rollout_layout"] == [1, 8, 384]
    flops = {(m.name, m.lengths): m.flops for m in p.programs}
    assert short["flops_ratio"]["train_step"] == flops[("packed_train_step", "median 16")] / flops[("train_step", None)]
    text = planning.format_plan(p)
    assert "packing: 32 responses of lognormal length (median 16, sigma 0.8)" in text
    assert "FLOPs packed / padded: no grad logprobs 0." in text and "TFLOP" in text and "(median 64)" in text
    assert json.loads(json.dumps(p.to_dict()))["packing"] == p.packing
