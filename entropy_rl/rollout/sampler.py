"""`generate`: batched sampling with a preallocated KV cache, compiled per bucketed shape.

Two schedulers return the same rows: with `SamplingConfig.scheduler="refill"` and fewer
slots than rows (`max_slots`, `kv_cache_budget_gb`) the rows go through a fixed number of
slots that finished rows free for waiting ones (`entropy_rl.rollout.refill`); otherwise
the static schedule below decodes all rows as one batch. Its compiled programs per
(batch, prompt bucket, response bucket, sampling transform):

    prefill: cache <- model(prompt), once per prompt, then copied to its n rows;
             y_0 ~ pi(. | prompt)
    decode:  while step < stop_step and not all rows stopped:
                 logits, cache <- model(y_{step-1}, cache);  y_step ~ pi(. | ...)

and, with config.decode_segments > 1, one decode program (and one cache growth) per decode
segment: the cache starts with the prompt and the first response slots and grows between
segments, allocated as it fills. A step's attention reads its cache only up to the chunk
of the last valid slot whatever the segments (`layers._single_query_attention`).

The model is split with `nnx.split` into (graphdef, state) at the jit boundary: graphdef is
static (part of the jit cache key); the programs read the state's sampling view
(`SamplingConfig.sampling_copy`, `entropy_rl.rollout.params`: the weights in the compute
dtype, split for decoding, made for the call) or else the very parameter arrays the trainer
updates, passed by reference (no copy, never donated). The decode state (cache, token buffers) is
donated to each decode call so XLA updates it in place. `stop_step` is a traced argument, so
the same decode program runs the whole response, or chunks of it between progress-bar
updates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from tqdm.auto import tqdm

from entropy_rl.model import KVCache
from entropy_rl.model.cache import KEYS_SLOT_AXIS, VALUES_SLOT_AXIS, grow_slots, repeat_rows
from entropy_rl.parallel import ROLLOUT_COMPILER_OPTIONS, batch_sharding, constrain
from entropy_rl.parallel.hosts import (addressable_rows, allgather_rows, global_from_host_rows, host_block,
                                       is_multiprocess, mesh_process_count)
from entropy_rl.rollout.batching import left_pad_prompts, round_up
from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.decoding import (
    BoundProgram,
    Program,
    batch_rows,
    batch_shards,
    constrain_cache,
    prefill_logits,
    row_keys,
    step_keys,
    stop_token_array,
)
from entropy_rl.rollout.params import sampling_params
from entropy_rl.rollout.refill import (RefillPrograms, RefillSchedule, generate_refill, prefill_bucket, refill_programs,
                                      slot_count)
from entropy_rl.rollout.result import Rollout, assemble_rollout


@struct.dataclass
class DecodeState:
    """Loop carry. B rows, R = response slots.

    cache: KVCache of prompt + response slots; last_tokens [B] int32 (fed next step);
    tokens [B, R] int32 and logprobs [B, R] float32 (written at column `step`);
    lengths [B] int32; stopped [B] bool; step int32 scalar (tokens generated so far);
    row_keys [B] PRNG keys (row r's step-s key is fold_in(row_keys[r], s));
    stop_token_ids [S] int32 (-1 = unused slot) and pad_token_id int32 scalar are data, not
    part of the program, so changing them does not recompile.
    """

    cache: KVCache
    last_tokens: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    step: jax.Array
    row_keys: jax.Array
    stop_token_ids: jax.Array
    pad_token_id: jax.Array


def _record(state: DecodeState, tokens: jax.Array, logprobs: jax.Array) -> DecodeState:
    """Write the step's tokens (pad for rows already stopped) and advance the step."""
    tokens = jnp.where(state.stopped, state.pad_token_id, tokens)
    logprobs = jnp.where(state.stopped, 0.0, logprobs)
    return state.replace(
        last_tokens=tokens,
        tokens=jax.lax.dynamic_update_slice_in_dim(state.tokens, tokens[:, None], state.step, axis=1),
        logprobs=jax.lax.dynamic_update_slice_in_dim(state.logprobs, logprobs[:, None], state.step, axis=1),
        lengths=state.lengths + (~state.stopped).astype(jnp.int32),
        stopped=state.stopped | jnp.isin(tokens, state.stop_token_ids),
        step=state.step + 1,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "program", "n", "batch"), compiler_options=ROLLOUT_COMPILER_OPTIONS)
def _prefill(graphdef, params, prompt_ids, prompt_mask, rng, stop_token_ids, pad_token_id, row_ids=None, *,
             program: Program, n: int, batch: int) -> DecodeState:
    """Fill the cache with the prompts [B_p, P], copy each prompt's row to its n samples'
    adjacent rows (the first `batch` <= B_p * n kept), and sample the first response token
    of each row. Row r draws from fold_in(rng, row_ids[r]) (row_ids [batch] int32; None = r)."""
    model = nnx.merge(graphdef, params)
    logits, cache = prefill_logits(model, prompt_ids, prompt_mask, program.cache_sizes(prompt_ids.shape[1])[0])
    logits = constrain(repeat_rows(logits, n, batch), ("batch", None))
    cache = constrain_cache(cache.repeat_rows(n, batch))
    keys = row_keys(rng, jnp.arange(batch) if row_ids is None else row_ids)
    state = DecodeState(
        cache=cache,
        last_tokens=constrain(jnp.zeros((batch,), jnp.int32), ("batch",)),
        tokens=constrain(jnp.full((batch, program.response_slots), pad_token_id, jnp.int32), ("batch", None)),
        logprobs=constrain(jnp.zeros((batch, program.response_slots), jnp.float32), ("batch", None)),
        lengths=constrain(jnp.zeros((batch,), jnp.int32), ("batch",)),
        stopped=constrain(jnp.zeros((batch,), bool), ("batch",)),
        step=jnp.zeros((), jnp.int32),
        row_keys=keys,
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
    )
    first_tokens, first_logprobs = program.sample(logits, step_keys(keys, state.step))
    return _record(state, first_tokens, first_logprobs)


@functools.partial(jax.jit, static_argnames=("graphdef", "program"), donate_argnames=("state",),
                   compiler_options=ROLLOUT_COMPILER_OPTIONS)
def _decode(graphdef, params, state: DecodeState, stop_step, *, program: Program) -> DecodeState:
    """Decode one token per row per step until step == stop_step or every row stopped."""
    model = nnx.merge(graphdef, params)

    def running(s: DecodeState):
        return (s.step < stop_step) & ~jnp.all(s.stopped)

    def step(s: DecodeState):
        ones = jnp.ones((s.last_tokens.shape[0], 1), jnp.int32)
        logits, cache = model(s.last_tokens[:, None], ones, cache=s.cache)
        tokens, logprobs = program.sample(logits[:, 0], step_keys(s.row_keys, s.step))
        return _record(s.replace(cache=cache), tokens, logprobs)

    return jax.lax.while_loop(running, step, state)


@functools.partial(jax.jit, static_argnames=("slots",))
def _grow_layer(keys: jax.Array, values: jax.Array, *, slots: int) -> tuple[jax.Array, jax.Array]:
    """One layer's keys and values grown to `slots` slots (their shardings kept: the slot
    axis is not split)."""
    return grow_slots(keys, slots, KEYS_SLOT_AXIS), grow_slots(values, slots, VALUES_SLOT_AXIS)


# The static scheduler's compiled programs by kind (`entropy_rl.rollout.compile_counts`).
PROGRAMS = {"prefill": _prefill, "decode": _decode, "grow": _grow_layer}


def _grow_cache(state: DecodeState, grow_layer: BoundProgram, *, slots: int) -> DecodeState:
    """The state with its cache grown to `slots` slots (the next decode segment's) by
    `grow_layer` (`_grow_layer`), layer by layer, each old layer deleted once its grown copy
    exists: the peak is the cache and one layer, not two caches (a growth cannot donate its
    input, its outputs have new shapes). The state's old cache is unusable afterwards."""
    cache, keys, values = state.cache, [], []
    for old_keys, old_values in zip(cache.k, cache.v):
        grown_keys, grown_values = grow_layer(old_keys, old_values, slots=slots)
        old_keys.delete()
        old_values.delete()
        keys.append(grown_keys)
        values.append(grown_values)
    return state.replace(cache=cache.replace(k=tuple(keys), v=tuple(values), valid=grow_slots(cache.valid, slots, 1)))


@dataclasses.dataclass(frozen=True)
class RolloutPrograms:
    """The compiled programs of one `generate` request and the counts that select them.

    Counts: n samples per prompt; prompt_slots P; rows N, the padded output rows (all
    processes'); slots S, the refill scheduler's slots (`slot_count`), else N; cache_slots C
    (`Program.cache_slots`); cache_sizes, the static schedule's decode segments' caches
    (`Program.cache_sizes`); row_multiple, the batch shards of one process (prefill
    buckets); blocks, the processes; refilling, whether the refill scheduler decodes the
    rows (scheduler "refill" and S < N).

    Programs, each called (or lowered) on the arguments after the graphdef, static ones
    bound: the static schedule's prefill (params, prompt_ids, prompt_mask, rng,
    stop_token_ids, pad_token_id, row_ids) -> DecodeState, grow_layer (keys, values, *,
    slots) and decode (params, state, stop_step) -> DecodeState; the refill scheduler's
    `refill` (`RefillPrograms`).
    """

    program: Program
    n: int
    prompt_slots: int
    rows: int
    slots: int
    cache_slots: int
    cache_sizes: tuple[int, ...]
    row_multiple: int
    blocks: int
    refilling: bool
    prefill: BoundProgram
    grow_layer: BoundProgram
    decode: BoundProgram
    refill: RefillPrograms

    def prefill_bucket(self, prompts: int) -> int:
        """The prompts of one process's refill prefill batch admitting `prompts` prompts."""
        return prefill_bucket(prompts, self.row_multiple)

    @property
    def largest_prefill(self) -> int:
        """The prompts (all processes') of the largest refill prefill: the first admission,
        which fills every process's block of slots with whole prompts' n rows."""
        return self.blocks * self.prefill_bucket(-(-(self.slots // self.blocks) // self.n))


def request_rows(prompts: int, n: int, mesh) -> tuple[int, int]:
    """(prompt rows, output rows) of a one-process request of `prompts` prompts x n samples:
    each padded to the mesh's batch shards, at least MIN_ROWS_PER_SHARD on each (`batch_rows`)."""
    shards = batch_shards(mesh)
    return batch_rows(prompts, shards), batch_rows(prompts * n, shards)


def rollout_programs(graphdef, model_config, config: SamplingConfig, mesh, *, prompt_slots: int,
                     rows: int) -> RolloutPrograms:
    """The programs `generate` runs to sample `rows` padded output rows (all processes') of
    config.n samples per prompt, prompts of `prompt_slots` tokens, with the model
    `graphdef` (of `model_config`) on `mesh` (None: the default device)."""
    program = Program.from_config(config, mesh)
    shards, blocks = batch_shards(mesh), mesh_process_count(mesh)
    cache_slots = program.cache_slots(prompt_slots)
    slots = slot_count(config, model_config, cache_slots, rows, shards)
    refilling = config.scheduler == "refill" and slots < rows
    slots = slots if refilling else rows
    return RolloutPrograms(
        program=program, n=config.n, prompt_slots=prompt_slots, rows=rows, slots=slots,
        cache_slots=cache_slots, cache_sizes=tuple(program.cache_sizes(prompt_slots)), row_multiple=shards // blocks,
        blocks=blocks, refilling=refilling,
        prefill=BoundProgram(_prefill, (graphdef,), {"program": program, "n": config.n, "batch": rows}),
        grow_layer=BoundProgram(_grow_layer),
        decode=BoundProgram(_decode, (graphdef,), {"program": program}),
        refill=refill_programs(graphdef, program, slots=slots, cache_slots=cache_slots, rows=rows,
                               prompt_slots=prompt_slots))


def generate(
    model: nnx.Module,
    prompts: Sequence[Sequence[int]],
    config: SamplingConfig,
    rng: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    schedule: RefillSchedule | None = None,
) -> Rollout:
    """Sample config.n responses for each prompt (token-id lists of any lengths).

    Prompts are left-padded to a multiple of config.prompt_bucket and prefilled once each
    (their caches then copied to their n rows); with a mesh the batch is
    split over its ("data", "fsdp") axes (rows padded to a multiple of that size) and the
    model's parameters are used where they live (shard them with `shard_model`). rng is a
    PRNG key; row r (0 <= r < len(prompts) * n) draws from fold_in(rng, r), so its sample
    does not depend on the batch it is in, nor on the scheduler (config.scheduler: refill
    decodes the rows through the slots `slot_count` allows, when fewer than the rows).
    progress=True shows a tqdm bar updated every config.progress_chunk tokens (refill:
    finished rows / total and tokens/s). A `RefillSchedule` passed as `schedule` is filled in
    when the refill scheduler runs. Returns a host-side `Rollout`.

    On several JAX processes each passes its own share of the prompts (`host_share`): the
    global batch holds every host's rows, host by host, and each host gets back a Rollout of
    its own rows only, whose row r draws from fold_in(rng, r + n * the prompts of the hosts
    before it): the samples of one process given all the prompts. max_slots and
    kv_cache_budget_gb then bound the global slots (`slot_count` of the global rows), split
    evenly among the hosts: each host refills its own block of slots with its own rows.
    """
    if is_multiprocess(mesh):
        prompt_ids, prompt_mask, row_ids = _host_prompt_block(prompts, config, mesh)
        batch = row_ids.shape[0] * mesh_process_count(mesh)
        place = functools.partial(global_from_host_rows, mesh=mesh)
    else:
        prompt_rows, batch = request_rows(len(prompts), config.n, mesh)
        prompt_ids, prompt_mask = left_pad_prompts(prompts, pad_token_id=config.pad_token_id,
                                                   prompt_bucket=config.prompt_bucket, rows=prompt_rows)
        row_ids, place = None, functools.partial(_to_device, mesh=mesh)
    graphdef, params = nnx.split(model)
    programs = rollout_programs(graphdef, model.config, config, mesh, prompt_slots=prompt_ids.shape[1], rows=batch)
    _check_vocab(model, prompt_ids)
    if config.sampling_copy:
        params = sampling_params(params, model.dtype, mesh)
    with programs.program.mesh_context():
        if programs.refilling:
            outputs = generate_refill(programs, params, prompt_ids, prompt_mask, rng, config,
                                      num_rows=len(prompts) * config.n, place=place, row_ids=row_ids,
                                      block=host_block(mesh), progress=progress, schedule=schedule)
        else:
            state = programs.prefill(params, place(prompt_ids), place(prompt_mask), rng, stop_token_array(config),
                                     jnp.int32(config.pad_token_id), None if row_ids is None else place(row_ids))
            state = _decode_all(programs, params, state, config, progress)
            outputs = (state.tokens, state.logprobs, state.lengths, state.stopped)
    # each host reads back only its own rows
    tokens, logprobs, lengths, stopped = (addressable_rows(x) if isinstance(x, jax.Array) else np.asarray(x)
                                          for x in outputs)
    return assemble_rollout(
        prompt_tokens=np.repeat(prompt_ids, config.n, axis=0),
        prompt_mask=np.repeat(prompt_mask, config.n, axis=0),
        tokens=tokens,
        logprobs=logprobs,
        lengths=lengths,
        stopped=stopped,
        num_rows=len(prompts) * config.n,
        n=config.n,
        max_new_tokens=config.max_new_tokens,
        pad_token_id=config.pad_token_id,
    )


def _decode_all(programs: RolloutPrograms, params, state, config, progress) -> DecodeState:
    """Run the decode program to max_new_tokens, segment by segment (`programs.cache_sizes`),
    each in one call, or with progress=True in calls of config.progress_chunk steps between
    updates of a tqdm bar (these synchronise, and stop early once every row has stopped)."""
    chunk = config.progress_chunk if progress else config.max_new_tokens
    done = 1
    with tqdm(total=config.max_new_tokens, desc="rollout", unit="tok", disable=not progress) as bar:
        bar.update(done)
        for slots in programs.cache_sizes:
            segment_end = min(slots - programs.prompt_slots + 1, config.max_new_tokens)
            if done >= segment_end:
                continue
            if slots > state.cache.max_length:
                state = _grow_cache(state, programs.grow_layer, slots=slots)
            while done < segment_end:
                stop_step = min(done + chunk, segment_end)
                state = programs.decode(params, state, jnp.int32(stop_step))
                if progress:
                    step, all_stopped = jax.device_get((state.step, jnp.all(state.stopped)))
                    bar.update(int(step) - done)
                    if all_stopped:
                        return state
                done = stop_step
    return state


def _host_prompt_block(prompts: Sequence[Sequence[int]], config: SamplingConfig, mesh
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This host's block of a multi-host batch: prompt ids and mask [R, P] and row ids [R n].

    Every host's block has the same shape: R = `batch_rows` of the largest host's prompt
    count over its batch shards, P = the longest prompt of any host rounded up to config.prompt_bucket
    (filler rows as in `left_pad_prompts`). Row ids continue those of the hosts before.
    """
    shards = batch_shards(mesh) // mesh_process_count(mesh)
    counts = allgather_rows(np.asarray([[len(prompts), max(map(len, prompts), default=1)]]), mesh)
    rows, length = batch_rows(int(counts[:, 0].max()), shards), round_up(int(counts[:, 1].max()), config.prompt_bucket)
    ids, mask = (left_pad_prompts(prompts, pad_token_id=config.pad_token_id, prompt_bucket=length) if prompts
                 else (np.zeros((0, length), np.int32), np.zeros((0, length), np.int32)))
    filler = rows - len(prompts)
    ids = np.pad(ids, ((0, filler), (0, 0)), constant_values=config.pad_token_id)
    mask = np.pad(mask, ((0, filler), (0, 0)))
    mask[len(prompts):, -1] = 1  # filler rows: one pad token, so attention always has a key
    first_row = config.n * int(counts[:host_block(mesh), 0].sum())
    return ids, mask, np.arange(first_row, first_row + rows * config.n, dtype=np.int32)


def _to_device(array: np.ndarray, mesh) -> jax.Array:
    return jnp.asarray(array) if mesh is None else jax.device_put(array, batch_sharding(mesh))


def _check_vocab(model, prompt_ids: np.ndarray) -> None:
    vocab_size = model.config.vocab_size
    if prompt_ids.min() < 0 or prompt_ids.max() >= vocab_size:
        raise ValueError(
            f"generate: prompt token ids must lie in [0, {vocab_size}) for this model, "
            f"got min {prompt_ids.min()} max {prompt_ids.max()} (pad_token_id included)"
        )
