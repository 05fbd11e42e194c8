"""`entropy-rl plan`: what each compiled program of a run needs per chip, before the run.

Compiles the run's programs (the sampler's own jitted programs, no-grad log-probs, train step) on
abstract inputs (`jax.ShapeDtypeStruct`s with the run's shardings, no weights) for the
devices present or, with libtpu installed (`pip install -e ".[tpu-plan]"`), for a named TPU
topology such as "v5p:2x4x4" on any machine, and reads the compiler's own per-chip memory
analysis. Also the analysis helpers the tests use: `count_sharding_constraints` (in a
jaxpr) and `collective_bytes` (in an optimized HLO module).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.extend as jex
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

# HLO collectives whose results travel between devices.
_COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_LINE = re.compile(r"= (.+?) (?:%s)(?:-start)?\(" % "|".join(_COLLECTIVES))
_ARRAY_TYPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _jaxprs(jaxpr: jex.core.Jaxpr) -> Iterator[jex.core.Jaxpr]:
    """`jaxpr` and every jaxpr nested in its equations (jit, scan, remat, custom_vjp, ...)."""
    yield jaxpr
    for sub in jex.core.subjaxprs(jaxpr):
        yield from _jaxprs(sub)


def count_sharding_constraints(jaxpr) -> int:
    """Number of `sharding_constraint` equations in a (Closed)Jaxpr, nested ones included.

    On `fn.trace(...).jaxpr` of a program traced under `jax.set_mesh(mesh)` this counts the
    model's active `constrain` calls; without a mesh they are no-ops and the count is 0.
    """
    root = getattr(jaxpr, "jaxpr", jaxpr)
    return sum(eqn.primitive.name == "sharding_constraint" for sub in _jaxprs(root) for eqn in sub.eqns)


def _unrolled_param(value: Any) -> Any:
    """An equation parameter with the scans of any jaxpr in it unrolled (`_unrolled`)."""
    if isinstance(value, jex.core.ClosedJaxpr):
        return jex.core.ClosedJaxpr(_unrolled(value.jaxpr), value.consts)
    if isinstance(value, jex.core.Jaxpr):
        return _unrolled(value)
    if isinstance(value, tuple) and any(isinstance(v, (jex.core.Jaxpr, jex.core.ClosedJaxpr)) for v in value):
        return tuple(_unrolled_param(v) for v in value)
    return value


def _unrolled(jaxpr: jex.core.Jaxpr) -> jex.core.Jaxpr:
    """`jaxpr` with every `scan` (also `lax.map`, static `fori_loop`), nested ones included,
    marked fully unrolled, and without its sharding constraints (identities, to count
    operations on any backend): lowered, it has no loop left but those with run-time bounds."""
    eqns, renamed = [], {}
    for eqn in jaxpr.eqns:
        invars = [renamed.get(v, v) if isinstance(v, jex.core.Var) else v for v in eqn.invars]
        if eqn.primitive.name == "sharding_constraint":
            renamed[eqn.outvars[0]] = invars[0]
            continue
        params = {name: _unrolled_param(value) for name, value in eqn.params.items()}
        if eqn.primitive.name == "scan":
            params["unroll"] = max(1, params["length"])
        eqns.append(eqn.replace(invars=invars, params=params))
    outvars = [renamed.get(v, v) if isinstance(v, jex.core.Var) else v for v in jaxpr.outvars]
    return jaxpr.replace(eqns=eqns, outvars=outvars)


def program_flops(program, *args) -> float | None:
    """Floating-point operations of one call of `program` (a `MeshBound`) on `args`, all chips
    together: XLA's cost analysis of its HLO before partitioning, lowered for this machine's
    CPU (operation counts do not depend on the devices), with every scan unrolled first: the
    analysis counts a loop body once, whatever its trip count (the layers under scan_layers,
    the micro-batches, the vocabulary chunks). Loops whose bounds are known only at run time
    (blockwise attention's) still count once. None for a program with a Pallas kernel
    (splash, Pallas GPU attention), whose work the analysis cannot see: `plan` counts a twin
    of the program with dense attention instead."""
    closed = program.trace(*args).jaxpr
    if any(eqn.primitive.name == "pallas_call" for sub in _jaxprs(closed.jaxpr) for eqn in sub.eqns):
        return None
    closed = jex.core.ClosedJaxpr(_unrolled(closed.jaxpr), closed.consts)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    inputs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=host) for a in closed.in_avals]
    cost = jax.jit(jex.core.jaxpr_as_fun(closed)).lower(*inputs).cost_analysis()
    return float(cost["flops"]) if cost and "flops" in cost else None


def collective_bytes(hlo_text: str) -> int:
    """Bytes produced by the collectives (all-gather, all-reduce, reduce-scatter, all-to-all,
    collective-permute) of an optimized HLO module's text, per device and per execution of
    each instruction (a collective inside a loop body counts once)."""
    total = 0
    for match in _COLLECTIVE_LINE.finditer(hlo_text):
        for dtype, dims in _ARRAY_TYPE.findall(match.group(1)):
            if dtype == "token":
                continue
            size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
            total += size * _dtype_bytes(dtype)
    return total


def large_copies(hlo_text: str, min_bytes: int) -> int:
    """Number of `copy` instructions in an optimized HLO module's text whose result holds at
    least `min_bytes` bytes (e.g. a decode step copying a layer's whole KV cache)."""
    count = 0
    for match in re.finditer(r"= (\S+) copy(?:-start)?\(", hlo_text):
        for dtype, dims in _ARRAY_TYPE.findall(match.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64)) * _dtype_bytes(dtype)
            count += size >= min_bytes
    return count


def loop_bodies(hlo_text: str) -> str:
    """The instructions an optimized HLO module's while loops run on every iteration: the
    text of their body and condition computations, and of the loops and conditionals nested
    in them, but not of the fusions they call (a fusion's inner instructions, copies
    included, make no buffer of their own). `large_copies(loop_bodies(text), n)` counts the
    buffers of at least n bytes a loop copies on every iteration."""
    computations = {}
    for block in re.split(r"\n(?=(?:ENTRY )?%\S+ \()", hlo_text):
        name = re.match(r"(?:ENTRY )?%(\S+) \(", block)
        if name:
            computations[name.group(1)] = block

    def nested(text):
        branches = re.findall(r"branch_computations=\{([^}]*)\}", text)
        return re.findall(r"\b(?:condition|body)=%([\w.\-]+)", text) + re.findall(r"%([\w.\-]+)", " ".join(branches))

    names, pending = set(), nested(hlo_text)
    while pending:
        name = pending.pop()
        if name in computations and name not in names:
            names.add(name)
            pending.extend(nested(computations[name]))
    return "\n".join(computations[name] for name in sorted(names))


def _dtype_bytes(hlo_dtype: str) -> int:
    """Bytes of one element of an HLO type name (f32, bf16, s32, pred, ...)."""
    if hlo_dtype == "pred":
        return 1
    bits = int(re.sub(r"\D", "", hlo_dtype) or 8)
    return max(bits // 8, 1)


# --------------------------------------------------------------------------- the plan

GIB = 2**30

# HBM per chip by TPU generation (topology name prefix), as the TPU compiler reports it
# available ("exceeds available HBM (95.74G)" on v5p).
TPU_HBM_BYTES = {"v4": 32 * GIB, "v5p": int(95.74 * GIB), "v5e": 16 * GIB, "v5litepod": 16 * GIB,
                 "v6e": 32 * GIB}

# The programs of one RL step, in the order a step runs them: the sampler's (the refill
# scheduler's when it decodes through fewer slots than rows, else the static schedule's),
# then the no-grad log-probs and the train step.
REFILL_PROGRAMS = ("empty_slots", "refill_prefill", "refill_decode")
STATIC_PROGRAMS = ("prefill", "grow_cache", "decode")
TRAIN_PROGRAMS = ("no_grad_logprobs", "train_step")
# The decode loops: their optimized HLO is checked for copies of a layer's whole cache.
DECODE_PROGRAMS = ("refill_decode", "decode")


@dataclasses.dataclass
class ProgramMemory:
    """One compiled program's memory per chip (bytes), from the compiler's memory analysis.

    total = arguments + outputs - aliased (donated buffers reused for outputs) + temporaries.
    resident: what else stays on the chip while it runs (the training parameters and Adam
    moments that are not among its arguments); peak = total + resident is what must fit.
    When the compiler itself refused the program for lack of memory, `error` holds its
    message and total what it says the program needs (or -1 if it does not say).
    """

    name: str
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    total: int = 0
    compile_s: float = 0.0
    resident: int = 0
    error: str | None = None
    cache_copies: int | None = None  # decode loop: copies of >= one layer's cache per step (None: not checked)
    flops: float | None = None  # update programs: one call, all chips (`program_flops`); None: not counted
    lengths: str | None = None  # packed programs: the response-length model they are planned for

    @property
    def peak(self) -> int:
        return self.total + self.resident if self.total >= 0 else self.total


@dataclasses.dataclass
class Plan:
    """Per-chip memory of a run's programs on `chips` devices of `device_kind`; kv_cache is
    the sampler's decode cache (the refill scheduler's slots, or every row's)."""

    target: str
    device_kind: str
    chips: int
    mesh: dict[str, int]
    hbm_bytes: int | None
    parameters: int
    optimizer_state: int
    sampling_view: int  # the sampler's parameter view (rollout.sampling_copy), 0 without one
    kv_cache: int
    shapes: dict[str, int]
    programs: list[ProgramMemory]
    packing: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per length model (`_packed_layouts`)

    @property
    def overflowing(self) -> list[str]:
        """Names of the programs that do not fit in HBM, in the order a step runs them."""
        if self.hbm_bytes is None:
            return [p.name for p in self.programs if p.error]
        return [p.name for p in self.programs if p.error or p.peak > self.hbm_bytes]

    @property
    def verdict(self) -> str:
        if self.overflowing:
            return f"does not fit: {self.overflowing[0]} overflows first"
        return "fits" if self.hbm_bytes is not None else "compiles (HBM of these devices unknown)"

    def to_dict(self) -> dict[str, Any]:
        programs = [dataclasses.asdict(p) | {"peak": p.peak} for p in self.programs]
        return dataclasses.asdict(self) | {"programs": programs, "fits": not self.overflowing, "verdict": self.verdict}


def _shard_bytes(tree) -> int:
    """Bytes per device of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape), dtype=np.int64)) * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(tree))


def _abstract(tree, shardings):
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (a matching tree)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _compile(name: str, lower, copy_bytes: int | None = None) -> tuple[ProgramMemory, Any]:
    """Compile `lower()` and read its memory analysis (or the compiler's out-of-memory error);
    with `copy_bytes`, also count the copies of at least that many bytes its loops make on
    every iteration. Returns the memory
    and the program's outputs as sharded ShapeDtypeStructs (None if it did not compile)."""
    start = time.time()
    try:
        lowered = lower()
        compiled = lowered.compile()
        stats = compiled.memory_analysis()
    except Exception as error:  # the TPU compiler refuses programs that exceed HBM
        message = str(error)
        if "RESOURCE_EXHAUSTED" not in message and "exceeds" not in message and "memory" not in message.lower():
            raise
        needed = re.search(r"Used ([\d.]+)([GMK]) of", message) or re.search(r"\(([\d.]+)([GMK])\) exceeds", message)
        total = int(float(needed.group(1)) * {"G": GIB, "M": 2**20, "K": 2**10}[needed.group(2)]) if needed else -1
        memory = ProgramMemory(name, total=total, compile_s=time.time() - start,
                               error=message.splitlines()[0][:300])
        return memory, None
    memory = ProgramMemory(name, arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                           aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                           compile_s=time.time() - start,
                           cache_copies=None if copy_bytes is None else large_copies(loop_bodies(compiled.as_text()),
                                                                                      copy_bytes))
    memory.total = memory.arguments + memory.outputs - memory.aliased + memory.temporaries
    return memory, _abstract(lowered.out_info, compiled.output_shardings)


def _policy_config(config, preset: str | None, preset_overrides: Mapping[str, Any] | None = None):
    """The QwenConfig of the run's policy: a named preset (when the checkpoint is not on this
    machine) with `preset_overrides` of its architecture, the checkpoint's config.json, or the
    built-in architecture."""
    from entropy_rl.model import QwenConfig
    from entropy_rl.policy import load_policy_tokenizer, qwen_config

    m = config.model
    if preset is not None:
        return QwenConfig.preset(preset, **m.runtime_options(), **(preset_overrides or {}))
    if m.hf_path is not None and not os.path.exists(m.hf_path):
        raise FileNotFoundError(f"model.hf_path {m.hf_path} is not on this machine: name the architecture "
                                "with --model (e.g. --model qwen3-8b)")
    vocab = m.vocab_size or (0 if m.hf_path else load_policy_tokenizer(m).vocab_size)
    return qwen_config(m, vocab)


def architecture_overrides(config, overrides: Sequence[str]) -> dict[str, Any]:
    """{field: validated value} of the `model.<architecture field>=...` command-line overrides
    (e.g. model.num_hidden_layers=4): what `--model PRESET` takes over from the preset."""
    from entropy_rl.config import ARCHITECTURE_FIELDS

    keys = {override.split("=", 1)[0].strip() for override in overrides}
    return {name: getattr(config.model, name) for name in ARCHITECTURE_FIELDS if f"model.{name}" in keys}


def plan(config, devices: Sequence[jax.Device], *, target: str, hbm_bytes: int | None,
         preset: str | None = None, prompt_length: int | None = None,
         on_program: Callable[[ProgramMemory], None] | None = None,
         preset_overrides: Mapping[str, Any] | None = None, response_medians: Sequence[float] = (),
         update_only: bool = False) -> Plan:
    """Compile the run's programs for `devices` on abstract inputs and collect their memory.

    Shapes: prompts of `prompt_length` tokens (default rollout.prompt_bucket), responses of
    rollout.max_new_tokens; the sampler's programs as `generate` runs them for one rollout
    (data.batch_size prompts x rollout.n samples; see `_sampler_programs`; left out with
    update_only); the no-grad forward over the whole rollout in the train loop's
    micro-batches; the train step on one mini-batch; their packed versions for each of
    `response_medians` (`_packed_layouts`: responses of lognormal lengths with that median;
    with none given, 0.2 x rollout.max_new_tokens when algorithm.packing is on or auto). The
    update programs' FLOPs come from `program_flops` on their twins with dense attention.
    `on_program` is called with each program's memory as soon as it is compiled (a 36-layer
    plan takes about 25 minutes on a loaded 2-core machine).
    """
    from flax import nnx

    from entropy_rl.model import Qwen
    from entropy_rl.parallel import make_mesh
    from entropy_rl.parallel.sharding import state_shardings
    from entropy_rl.train.programs import UpdateSettings
    from entropy_rl.train.step import TrainState, state_sharding

    mesh = make_mesh(config.mesh, devices=devices)
    model_config = _policy_config(config, preset, preset_overrides)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen(model_config, rngs=nnx.Rngs(0))))
    params = _abstract(params, state_shardings(params, mesh))
    r = config.rollout
    settings = UpdateSettings.from_config(config)
    opt_state = jax.eval_shape(settings.optimizer.init, params)
    scalar = jax.ShapeDtypeStruct((), np.int32)
    state = TrainState(graphdef=graphdef, params=params, opt_state=opt_state, step=scalar)
    state = _abstract(state, state_sharding(state, mesh))

    prompt_length = prompt_length or r.prompt_bucket
    report = on_program or (lambda memory: None)
    parameters, optimizer_state = _shard_bytes(params), _shard_bytes(state.opt_state)
    sampler_params = _sampling_view(params, model_config, mesh) if r.sampling_copy else params
    # while sampling, the training parameters (when the sampler reads its view) and Adam stay
    sampler_resident = optimizer_state + (parameters if sampler_params is not params else 0)
    sampler_programs, sampler_shapes, kv_cache = [], {}, 0
    if not update_only:
        sampler_programs, sampler_shapes, kv_cache = _sampler_programs(
            config, model_config, graphdef, sampler_params, mesh, prompt_length, sampler_resident, report)
    train_programs, packing = _update_plan(config, model_config, state, settings, mesh, prompt_length=prompt_length,
                                           optimizer_state=optimizer_state, report=report,
                                           response_medians=response_medians)
    return Plan(target=target, device_kind=devices[0].device_kind, chips=len(devices), mesh=dict(mesh.shape),
                hbm_bytes=hbm_bytes, parameters=parameters, optimizer_state=optimizer_state,
                sampling_view=_shard_bytes(sampler_params) if sampler_params is not params else 0, kv_cache=kv_cache,
                shapes={"layers": model_config.num_hidden_layers, "prompt_length": prompt_length,
                        "response_length": r.max_new_tokens, **sampler_shapes,
                        "mini_batch_rows": settings.mini_rows, "micro_batches": settings.step_config.num_micro_batches},
                programs=sampler_programs + train_programs, packing=packing)


def _update_plan(config, model_config, state, settings, mesh, *, prompt_length: int, optimizer_state: int,
                 report: Callable[[ProgramMemory], None], response_medians: Sequence[float]):
    """(memory of the update's programs, packed-layout summaries) for `plan`: the no-grad
    forward over the whole rollout and the train step on one mini-batch, as the run builds
    them (`build_programs`), then their packed versions for each response-length median.
    Each program's FLOPs are counted on its twin with dense attention (`program_flops`: a
    Pallas kernel's work is not visible)."""
    from flax import nnx

    from entropy_rl.losses import get_policy_loss
    from entropy_rl.model import Qwen
    from entropy_rl.parallel import batch_sharding
    from entropy_rl.train.programs import build_programs
    from entropy_rl.train.step import UpdateBatch

    a, response_length = config.algorithm, config.rollout.max_new_tokens
    needs_reference = get_policy_loss(a.name).needs_reference(a.policy_loss())
    rows_sharding = batch_sharding(mesh)

    def update_batch(rows):
        def array(shape, dtype):
            return jax.ShapeDtypeStruct(shape, dtype, sharding=rows_sharding)
        tokens, logp = array((rows, response_length), np.int32), array((rows, response_length), np.float32)
        return UpdateBatch(prompt_tokens=array((rows, prompt_length), np.int32),
                           prompt_mask=array((rows, prompt_length), np.int32), tokens=tokens, mask=tokens,
                           advantages=array((rows,), np.float32), old_logp=logp,
                           ref_logp=logp if needs_reference else None)

    dense = dataclasses.replace(model_config, attention_implementation="dense")
    twin = state.replace(graphdef=nnx.split(nnx.eval_shape(lambda: Qwen(dense, rngs=nnx.Rngs(0))))[0])
    built = build_programs(state, mesh, settings)
    programs, twins = (_update_programs(p) for p in (built, build_programs(twin, mesh, settings)))
    key = _replicated(jax.eval_shape(lambda: jax.random.key(0)), mesh)
    train_programs = []

    def update_program(name, arguments, resident, lengths=None):
        """Compile program `name` on arguments(state) and count its twin's FLOPs."""
        memory, _ = _compile(name, lambda: programs[name].lower(*arguments(state)))
        memory = dataclasses.replace(memory, resident=resident, lengths=lengths,
                                     flops=program_flops(twins[name], *arguments(twin)))
        train_programs.append(memory)
        report(memory)
        return memory

    all_rows, mini_rows = settings.rows, settings.mini_rows
    padded = [update_program("no_grad_logprobs", lambda s: (s.params, update_batch(all_rows)), optimizer_state),
              update_program("train_step", lambda s: (s, update_batch(mini_rows), key), 0)]
    packing = []
    for median in (response_medians or ([0.2 * response_length] if a.packing != "off" else [])):
        summary, layouts = _packed_layouts(built.packed, mesh, rows=all_rows, mini_rows=mini_rows,
                                           prompt_length=prompt_length, response_length=response_length,
                                           median=median)
        lengths = f"median {median:g}"
        packed = [update_program("packed_no_grad_logprobs",
                                 lambda s: (s.params, update_batch(all_rows), layouts[0]), optimizer_state, lengths),
                  update_program("packed_train_step", lambda s: (s, update_batch(mini_rows), layouts[1], key), 0,
                                 lengths)]
        packing.append(summary | {"flops_ratio": {p.name: (q.flops / p.flops if q.flops and p.flops else None)
                                                  for p, q in zip(padded, packed)}})
    return train_programs, packing


def _update_programs(programs) -> dict:
    """{name: MeshBound} of the update's `Programs` a plan compiles: the no-grad forward over
    a rollout, the train step, and both on packed rows."""
    return {"no_grad_logprobs": programs.logprobs, "train_step": programs.train_step,
            "packed_no_grad_logprobs": programs.packed.logprobs, "packed_train_step": programs.packed.train_step}


LENGTH_SIGMA = 0.8  # the lognormal length model's spread (`entropy_rl.train.packing.lognormal_lengths`)


def _packed_layouts(packed, mesh, *, rows: int, mini_rows: int, prompt_length: int, response_length: int,
                    median: float):
    """(the packing summary, abstract layouts of the whole rollout and of one mini-batch) of a
    rollout of `rows` responses of lognormal lengths (`lognormal_lengths`, seed 0, sigma
    LENGTH_SIGMA, at most response_length) whose prompts fill prompt_length, laid out under
    the run's budgets as the loop lays them out (`packed`: the run's `PackedUpdate`)."""
    from entropy_rl.train.packing import lognormal_lengths, padded_tokens
    from entropy_rl.train.step import packed_layout_sharding

    responses = lognormal_lengths(np.random.default_rng(0), rows, response_length, median=median, sigma=LENGTH_SIGMA)
    prompts = np.full(rows, prompt_length)
    layouts = [packed.packed_layout(prompts[:n], responses[:n], prompt_columns=prompt_length,
                                    response_columns=response_length) for n in (rows, mini_rows)]
    real = int(np.sum(prompts + responses - 1))
    summary = {"response_median": median, "response_sigma": LENGTH_SIGMA, "rows": rows,
               "useful_fraction_padded": real / padded_tokens(rows, prompt_length, response_length),
               "useful_fraction_packed": real / layouts[0].packed_tokens,
               "rollout_layout": list(layouts[0].source.shape), "mini_batch_layout": list(layouts[1].source.shape)}
    return summary, [_abstract(layout, packed_layout_sharding(mesh)) for layout in layouts]


def _sampling_view(params, model_config, mesh):
    """The abstract sampling view of the abstract training parameters, as `generate` makes
    it (`entropy_rl.rollout.params`: compute-dtype weights placed by SAMPLING_AXIS_RULES)."""
    from entropy_rl.rollout.params import sampling_shardings, view_dtype

    view = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, view_dtype(x, model_config.dtype), sharding=s),
                        params, sampling_shardings(params, mesh))
    same = all(v.dtype == x.dtype and v.sharding.is_equivalent_to(x.sharding, x.ndim)
               for v, x in zip(jax.tree.leaves(view), jax.tree.leaves(params)))
    return params if same else view  # as `sampling_params`: no copy where it would change nothing


def _replicated(abstract, mesh) -> jax.ShapeDtypeStruct:
    """A ShapeDtypeStruct like `abstract`, replicated over the mesh."""
    return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=NamedSharding(mesh, PartitionSpec()))


def _grown(state, slots: int):
    """The abstract decode state with its cache grown to `slots` slots, every array sharded as
    before (a growth pads the slot axis, which is not split)."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return _abstract(jax.eval_shape(lambda s: s.replace(cache=s.cache.grow(slots)), state), shardings)


def _sampler_programs(config, model_config, graphdef, params, mesh, prompt_length, resident: int,
                      report=lambda memory: None) -> tuple[list[ProgramMemory], dict[str, Any], int]:
    """Compile the sampler's programs (`rollout_programs`) as `generate` runs them for one
    rollout of data.batch_size prompts x rollout.n samples, under the mesh.

    Refill scheduler: empty_slots, refill_prefill of the first (largest) admission and
    refill_decode on the slots' state. Otherwise the static schedule: prefill, one layer's
    last (largest) growth (the cache grows layer by layer) and decode on the whole cache.
    Each program's input state is its predecessor's compiled output.
    Returns (the programs' memory, each with `resident` bytes beside it, their shapes, the
    decode cache's bytes per chip); each program's memory also goes to `report` once compiled.
    """
    from entropy_rl.parallel import batch_sharding
    from entropy_rl.rollout.decoding import stop_token_array
    from entropy_rl.rollout.sampler import request_rows, rollout_programs

    r = config.rollout
    sampling = r.sampling_config(stop_token_ids=(0,), pad_token_id=0)
    prompt_rows, rows = request_rows(config.data.batch_size, r.n, mesh)
    sampler = rollout_programs(graphdef, model_config, sampling, mesh, prompt_slots=prompt_length, rows=rows)

    def by_rows(*shape):
        return jax.ShapeDtypeStruct(shape, np.int32, sharding=batch_sharding(mesh))

    def scalar():
        return _replicated(jax.ShapeDtypeStruct((), np.int32), mesh)

    stop_ids = _replicated(jax.eval_shape(lambda: stop_token_array(sampling)), mesh)
    rng = _replicated(jax.eval_shape(lambda: jax.random.key(0)), mesh)
    programs = []

    def run(name, lower, state=None):
        """Compile `lower` under the mesh (a decode loop checked for copies of a layer's
        cache), record its memory, and return its outputs (None if it did not compile)."""
        copy_bytes = _shard_bytes(state.cache.v[0]) if name in DECODE_PROGRAMS else None
        with jax.set_mesh(mesh):
            memory, outputs = _compile(name, lower, copy_bytes)
        memory.resident = resident
        programs.append(memory)
        report(memory)
        return outputs

    if sampler.refilling:
        refill = sampler.refill
        state = run("empty_slots", lambda: refill.empty_slots.lower(params, stop_ids, scalar(), scalar()))
        entries = by_rows(sampler.largest_prefill * sampler.n)
        prompts = by_rows(sampler.largest_prefill, prompt_length)
        if state is not None:
            state = run("refill_prefill", lambda: refill.refill_prefill.lower(
                params, state, prompts, prompts, entries, entries, entries, entries, rng))
        free_to_stop = _replicated(jax.ShapeDtypeStruct((sampler.blocks,), np.int32), mesh)  # a block of slots per host
        decode_name, lower_decode = "refill_decode", lambda decode_state: refill.refill_decode.lower(
            params, decode_state, scalar(), free_to_stop)
    else:
        prompts = by_rows(prompt_rows, prompt_length)
        state = run("prefill", lambda: sampler.prefill.lower(params, prompts, prompts, rng, stop_ids, scalar()))
        sizes = sampler.cache_sizes
        if state is not None and len(sizes) > 1:  # the last (largest) growth of one layer, as generate grows it
            state = _grown(state, sizes[-2])
            run("grow_cache", lambda: sampler.grow_layer.lower(state.cache.k[0], state.cache.v[0], slots=sizes[-1]))
            state = _grown(state, sizes[-1])
        decode_name, lower_decode = "decode", lambda decode_state: sampler.decode.lower(params, decode_state, scalar())
    kv_cache = -1 if state is None else _shard_bytes(state.cache)
    if state is not None:
        run(decode_name, lambda: lower_decode(state), state)
    shapes = {"scheduler": "refill" if sampler.refilling else "static", "rollout_rows": sampler.rows,
              "slots": sampler.slots, "cache_slots": sampler.cache_slots}
    return programs, shapes, kv_cache


# --------------------------------------------------------------------------- command line


def topology_devices(topology: str) -> tuple[list, int | None]:
    """(the devices of a TPU topology such as "v5p:2x4x4" (libtpu, no TPU needed), their HBM per chip).

    Sets ALLOW_MULTIPLE_LIBTPU_LOAD (unless set): libtpu otherwise takes a machine-wide lock
    file, so a plan would fail beside any other process holding libtpu (a second plan, a test
    worker, a training job on a TPU host); compiling for a topology runs nothing on a TPU.
    Sets TPU_WORKER_HOSTNAMES=localhost (unless set): libtpu would look the workers up.
    """
    from jax.experimental import topologies

    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # off a TPU VM: no "unexpected worker hostname" error
    generation = topology.split(":")[0].lower()
    # v4 and v5p chips have two TensorCores run as one device ("megacore"), as on a real pod
    megacore = {"chip_config_name": "megacore"} if generation in ("v4", "v5p") else {}
    try:
        description = topologies.get_topology_desc(topology_name=topology, platform="tpu", **megacore)
    except Exception as error:
        raise RuntimeError(f"cannot describe TPU topology {topology!r} ({error}); planning for a TPU topology "
                           'needs libtpu: pip install -e ".[tpu-plan]"') from error
    return list(description.devices), TPU_HBM_BYTES.get(generation)


def local_hbm_bytes(device) -> int | None:
    """The memory limit of a present device (None where the runtime does not say, e.g. CPU)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return (stats or {}).get("bytes_limit")


def format_plan(p: Plan) -> str:
    """The plan as a per-chip table (GiB; the update programs' TFLOP per call, all chips),
    the packed update's summary when planned, and a verdict line."""
    gib = lambda n: f"{n / GIB:8.2f}" if n >= 0 else "       ?"  # noqa: E731
    hbm = f"{p.hbm_bytes / GIB:.2f} GiB HBM each" if p.hbm_bytes else "memory limit unknown"
    mesh = " x ".join(f"{k}={v}" for k, v in p.mesh.items())
    shapes = ", ".join(f"{k} {v}" for k, v in p.shapes.items())
    lines = [f"plan for {p.target}: {p.chips} x {p.device_kind} ({hbm}), mesh {mesh}", f"shapes: {shapes}",
             "per chip (GiB):",
             f"  parameters        {gib(p.parameters)}",
             f"  optimizer state   {gib(p.optimizer_state)}",
             f"  sampling view     {gib(p.sampling_view)}",
             *([f"  KV cache (sampler){gib(p.kv_cache)}   ({p.shapes['slots']} slots in all)"] if "slots" in p.shapes
               else []),
             f"  {'program':<24}{'arguments':>10}{'outputs':>10}{'aliased':>10}{'temps':>10}{'total':>10}"
             f"{'resident':>10}{'peak':>10}  fits{'TFLOP':>10}"]
    for m in p.programs:
        fits = "no" if m.name in p.overflowing else ("yes" if p.hbm_bytes else "?")
        flops = f"{m.flops / 1e12:10.4g}" if m.flops is not None else ""
        lines.append(f"  {m.name:<24}  {gib(m.arguments)}  {gib(m.outputs)}  {gib(m.aliased)}  "
                     f"{gib(m.temporaries)}  {gib(m.total)}  {gib(m.resident)}  {gib(m.peak)}  {fits:<4}{flops}"
                     + (f"  ({m.error})" if m.error else "")
                     + (f"  ({m.cache_copies} copies of a layer's cache)" if m.cache_copies else "")
                     + (f"  ({m.lengths})" if m.lengths else ""))
    lines += [packing_line(k) for k in p.packing]
    lines.append(f"verdict: {p.verdict}")
    return "\n".join(lines)


def packing_line(k: dict[str, Any]) -> str:
    """One length model's packed update against the padded one: useful tokens, FLOP ratios."""
    ratios = ", ".join(f"{name.replace('_', ' ')} {ratio:.2f}" if ratio else f"{name.replace('_', ' ')} ?"
                       for name, ratio in k["flops_ratio"].items())
    return (f"packing: {k['rows']} responses of lognormal length (median {k['response_median']:g}, sigma "
            f"{k['response_sigma']:g}), rows {'x'.join(map(str, k['rollout_layout']))} (mini-batch "
            f"{'x'.join(map(str, k['mini_batch_layout']))}); useful tokens {k['useful_fraction_padded']:.2f} padded, "
            f"{k['useful_fraction_packed']:.2f} packed; FLOPs packed / padded: {ratios}")


def program_line(memory: ProgramMemory) -> str:
    """One compiled program's memory in a line (progress of a long plan)."""
    return (f"{memory.name}: peak {memory.peak / GIB:.2f} GiB (temporaries {memory.temporaries / GIB:.2f}, "
            f"resident {memory.resident / GIB:.2f}), "
            f"compiled in {memory.compile_s:.0f} s" + (f", {memory.flops / 1e12:.1f} TFLOP" if memory.flops else "")
            + (f", {memory.error}" if memory.error else ""))


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="entropy-rl plan",
        description="Compile a run's programs (the sampler's as its rollout.scheduler runs them, no-grad "
        "log-probs, train step) on abstract inputs and print their memory per chip against the chip's HBM. "
        "The refill scheduler's slots follow rollout.max_slots / rollout.kv_cache_budget_gb (GB per chip).",
        epilog="example:\n  entropy-rl plan --config configs/paper/stapo_qwen3_8b.yaml "
        "--config configs/mesh/tpu_v5p_64.yaml --topology v5p:2x4x4 --model qwen3-8b",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="YAML", action="append", default=[], help="config file(s), as for train")
    parser.add_argument("--topology", help='a TPU topology, e.g. "v5p:2x4x4" (needs libtpu: the tpu-plan extra); '
                        "default: the devices present")
    parser.add_argument("--model", metavar="PRESET", help="the policy's architecture by preset name (e.g. qwen3-8b) "
                        "when model.hf_path is not on this machine")
    parser.add_argument("--prompt-length", type=int, help="prompt tokens (default rollout.prompt_bucket)")
    parser.add_argument("--response-median", type=float, metavar="TOKENS", action="append", default=[],
                        help="plan the packed update for responses of lognormal length (sigma 0.8) with this median; "
                        "repeat for several (default with algorithm.packing on or auto: 0.2 x rollout.max_new_tokens)")
    parser.add_argument("--update-only", action="store_true",
                        help="plan the update programs only (no-grad log-probs, train step), not the sampler's")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override any config field")
    return parser


def main(argv: list[str] | None = None) -> int:
    import json
    import sys

    from entropy_rl.train.config import ConfigError, load_config

    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, args.overrides, check_paths=False)
    except ConfigError as error:
        print(f"entropy-rl plan: {error}", file=sys.stderr)
        return 2
    if args.topology:
        devices, hbm = topology_devices(args.topology)
        target = args.topology
    else:
        devices = jax.devices()
        hbm, target = local_hbm_bytes(devices[0]), f"the {len(devices)} {devices[0].platform} devices present"
    result = plan(config, devices, target=target, hbm_bytes=hbm, preset=args.model, prompt_length=args.prompt_length,
                  on_program=lambda memory: print(program_line(memory), file=sys.stderr, flush=True),
                  preset_overrides=architecture_overrides(config, args.overrides),
                  response_medians=args.response_median, update_only=args.update_only)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
    return 0 if not result.overflowing else 1
