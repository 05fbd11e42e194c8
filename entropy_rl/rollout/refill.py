"""The refill scheduler: all rows of a request decoded through a fixed number of slots.

A static batch decodes until its last row stops, so rows that stopped early keep stepping
(and reading their cache) for nothing; with long-tailed response lengths most row-steps
are wasted. Here S slots (`slot_count`: `max_slots`, or the most whose KV cache fits
`kv_cache_budget_gb` per chip) decode the len(prompts) * n rows; the host loop is

    while a row waits or a slot is live:
        refill_prefill: prefill waiting prompts (once per prompt for all its admitted
                        samples), write their caches into free slots, sample each row's y_0
        refill_decode:  decode every live slot one token per step, until a whole prompt's
                        n rows could be admitted (n slots free, of one process's), every
                        slot is done, or progress_chunk steps passed (with progress=True)

Exactness: row r's step-s token is drawn with fold_in(fold_in(rng, r), s) from logits that
depend only on its own prompt and tokens, and its cache row has the static sampler's
layout (the prompt at slots [0, P), its step-s token at P + s - 1), so each row gets the
static sampler's tokens, log-probs, length and stop flag whatever the slot count or the
order of admission, bitwise on the CPU (`tests/rollout/test_rollout_refill.py`,
tests/multiprocess/test_multiprocess_refill.py). That needs every op to give a row the same
bits in a batch of any size: the sampler's programs compile with `ROLLOUT_COMPILER_OPTIONS`
(YNNPACK takes single dots only, not its batch-variant fused reductions), and every program
runs at least MIN_ROWS_PER_SHARD = 2 rows per batch shard (a one-row product is a
vector-matrix dot that rounds differently): `slot_count` allows no fewer slots, and prefill
batches (`prefill_bucket`) and static batches (`batch_rows`) are padded to them
(tools/bench/batch_invariance.py measures each op). Against another mesh layout the
log-probs agree to float32 rounding only (the sampling view's split MLP sums partial
products in another order).

Per-row write positions with the model's one-slot-for-all-rows cache write: the slots'
KVCache keeps `length` at the last slot C - 1 (a scratch slot no real token uses, since
C = `Program.cache_slots` >= P + max_new_tokens > P + max_new_tokens - 1). A step feeds
each slot's last token, the model writes its keys/values at the scratch slot (attention
reads the valid slots and the new token itself, so the slot it lands in does not matter),
then `_settle_scratch` moves them to the row's own slot P + s - 1 and marks that slot
valid; rotary positions count the row's valid slots, so they are the static ones.
A step's attention reads the C slots in chunks of 64, only up to the chunk of the longest
live row's last slot (`layers._single_query_attention`), C = P + R rounded up to whole
chunks.

Shapes: S slots, C cache slots, a prefill batch of 2 * shards * 2^k prompts (the bucket of
the waiting prompts a refill admits, `prefill_bucket`) and N = rows padded output rows:
one decode program and log2(S) prefill programs at most per request shape.

Several processes (one per host): the S slots, the N output rows and each prefill batch are
split into equal contiguous blocks, one per process (block b on the devices of process b,
as a batch-sharded array is: `entropy_rl.parallel.hosts`). Each process schedules only its
own rows (its share of the prompts x n) into its own S / processes slots, and builds each
admission's global arrays from its block (`place`: jax.make_array_from_process_local_data),
the slot, output-row and prefill-source indices offset to its block. Host decisions go
through `agree` (an int vector -> its element-wise maximum over processes,
`agree_across_processes`), so every process calls the same programs, with the same prefill
bucket, the same number of times: the loop ends when no process has a row left, and a
decode call ends when any process has enough free slots of its own to admit a prompt.
Row r of a process draws from fold_in(rng, row_ids[r]) (its global row id), so its sample
does not depend on the process count or the schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from entropy_rl.model import KVCache
from entropy_rl.parallel import ROLLOUT_COMPILER_OPTIONS, constrain
from entropy_rl.parallel.hosts import addressable_rows
from entropy_rl.parallel.watchdog import beat
from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.decoding import (
    MIN_ROWS_PER_SHARD,
    BoundProgram,
    Program,
    constrain_cache,
    prefill_logits,
    row_keys,
    step_keys,
    stop_token_array,
)

if TYPE_CHECKING:
    from entropy_rl.rollout.sampler import RolloutPrograms


@struct.dataclass
class SlotState:
    """The refill scheduler's device state: S slots, N output rows, R response slots.

    cache: KVCache [S, ..., C], `length` pinned to the scratch slot C - 1.
    last_tokens [S] int32 (fed next step); steps [S] int32 (tokens the slot's row has
    generated); rows [S] int32 (the row in the slot); live [S] bool (the slot's row still
    decodes); keys [S] (the row's PRNG key); tokens [N, R] int32, logprobs [N, R] float32,
    lengths [N] int32, stopped [N] bool: the rows' outputs, written as they are sampled;
    generated: int32 scalar, tokens sampled so far; decode_steps: int32 scalar, steps of the
    slot batch so far; stop_token_ids [8k] int32 (-1 unused),
    pad_token_id and max_new_tokens int32 scalars: data, not part of the program.
    """

    cache: KVCache
    last_tokens: jax.Array
    steps: jax.Array
    rows: jax.Array
    live: jax.Array
    keys: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    stopped: jax.Array
    generated: jax.Array
    decode_steps: jax.Array
    stop_token_ids: jax.Array
    pad_token_id: jax.Array
    max_new_tokens: jax.Array


def kv_bytes_per_slot(model_config, cache_slots: int) -> int:
    """Bytes of one slot's KV cache: 2 (k, v) * layers * kv heads * head_dim * C * itemsize,
    plus C bytes of its valid mask."""
    c = model_config
    itemsize = jnp.dtype(c.dtype).itemsize
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * cache_slots * itemsize + cache_slots


def slot_count(config: SamplingConfig, model_config, cache_slots: int, rows: int, row_multiple: int) -> int:
    """The number of slots: the fewest of `rows`, config.max_slots (slots in all) and the
    slots whose KV cache fits config.kv_cache_budget_gb per chip, rounded down to a
    multiple of row_multiple (the mesh's batch shards).

    The slots are split over the row_multiple batch shards, so each chip holds
    slots / row_multiple slots of `kv_bytes_per_slot` bytes (C = cache_slots): the budget
    allows row_multiple * floor(budget / kv_bytes_per_slot) slots. A slot's whole cache is
    counted on its chip (an upper bound where the tensor axis splits the kv heads). Raises
    ValueError below MIN_ROWS_PER_SHARD slots per shard (a one-row decode batch rounds
    differently: see decoding.MIN_ROWS_PER_SHARD).
    """
    limit = rows
    if config.max_slots:
        limit = min(limit, config.max_slots)
    per_slot = kv_bytes_per_slot(model_config, cache_slots)
    if config.kv_cache_budget_gb:
        limit = min(limit, int(config.kv_cache_budget_gb * 1e9 // per_slot) * row_multiple)
    slots = limit // row_multiple * row_multiple
    if slots < MIN_ROWS_PER_SHARD * row_multiple:
        raise ValueError(
            f"SamplingConfig: max_slots {config.max_slots} and kv_cache_budget_gb {config.kv_cache_budget_gb} "
            f"(per chip) allow {limit} slots, fewer than {MIN_ROWS_PER_SHARD} for each of the mesh's {row_multiple} "
            f"batch shards (a slot's cache of {cache_slots} positions takes {per_slot / 1e9:.4g} GB)"
        )
    return slots


def prefill_bucket(prompts: int, row_multiple: int) -> int:
    """The prompts of a refill prefill batch admitting `prompts` prompts: the smallest
    row_multiple * MIN_ROWS_PER_SHARD * 2^k >= prompts (a handful of programs per request)."""
    size = MIN_ROWS_PER_SHARD * row_multiple
    while size < prompts:
        size *= 2
    return size


@functools.partial(jax.jit, static_argnames=("graphdef", "slots", "cache_slots", "rows", "response_slots"))
def _empty_slots(graphdef, params, stop_token_ids, pad_token_id, max_new_tokens, *, slots: int, cache_slots: int,
                 rows: int, response_slots: int) -> SlotState:
    """Every slot empty (rows = `rows`, past the last output row), outputs padding."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(slots, cache_slots)
    by_slot = functools.partial(constrain, axes=("batch",))
    return SlotState(
        cache=constrain_cache(cache.replace(length=jnp.int32(cache_slots - 1))),
        last_tokens=by_slot(jnp.zeros((slots,), jnp.int32)),
        steps=by_slot(jnp.zeros((slots,), jnp.int32)),
        rows=by_slot(jnp.full((slots,), rows, jnp.int32)),
        live=by_slot(jnp.zeros((slots,), bool)),
        keys=row_keys(jax.random.key(0), jnp.zeros((slots,), jnp.int32)),
        tokens=constrain(jnp.full((rows, response_slots), pad_token_id, jnp.int32), ("batch", None)),
        logprobs=constrain(jnp.zeros((rows, response_slots), jnp.float32), ("batch", None)),
        lengths=constrain(jnp.zeros((rows,), jnp.int32), ("batch",)),
        stopped=constrain(jnp.zeros((rows,), bool), ("batch",)),
        generated=jnp.zeros((), jnp.int32),
        decode_steps=jnp.zeros((), jnp.int32),
        stop_token_ids=stop_token_ids,
        pad_token_id=pad_token_id,
        max_new_tokens=max_new_tokens,
    )


def _record(state: SlotState, tokens: jax.Array, logprobs: jax.Array, writes: jax.Array) -> SlotState:
    """Record the tokens [S] and log-probs [S] of the slots where `writes` [S]: write them at
    their rows' current steps, advance those steps, and retire the rows that emitted a stop
    token or reached max_new_tokens. Other slots keep their state."""
    rows = jnp.where(writes, state.rows, state.tokens.shape[0])  # out of range: dropped
    steps = state.steps + writes.astype(jnp.int32)
    continues = ~jnp.isin(tokens, state.stop_token_ids) & (steps < state.max_new_tokens)
    return state.replace(
        last_tokens=jnp.where(writes, tokens, state.last_tokens),
        tokens=state.tokens.at[rows, state.steps].set(tokens, mode="drop"),
        logprobs=state.logprobs.at[rows, state.steps].set(logprobs, mode="drop"),
        lengths=state.lengths.at[rows].set(steps, mode="drop"),
        stopped=state.stopped.at[rows].set(jnp.isin(tokens, state.stop_token_ids), mode="drop"),
        steps=steps,
        live=jnp.where(writes, continues, state.live),
        generated=state.generated + jnp.sum(writes, dtype=jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "program"), donate_argnames=("state",),
                   compiler_options=ROLLOUT_COMPILER_OPTIONS)
def _refill_prefill(graphdef, params, state: SlotState, prompt_ids, prompt_mask, sources, slots, rows, row_ids, rng,
                    *, program: Program) -> SlotState:
    """Prefill the prompts [B_p, P] once each and start I admitted rows: output row rows[i]
    (of prompt sources[i] in this batch) goes to slot slots[i]; entries with slot >= S are
    dropped. Writes each row's prompt cache at slots [0, P) of its slot (the rest invalid)
    and samples its first token with fold_in(fold_in(rng, row_ids[i]), 0)."""
    model = nnx.merge(graphdef, params)
    prompt_slots = prompt_ids.shape[1]
    logits, prompt_cache = prefill_logits(model, prompt_ids, prompt_mask, prompt_slots)
    cache = state.cache
    valid = jnp.zeros((sources.shape[0], cache.max_length), bool).at[:, :prompt_slots].set(prompt_cache.valid[sources])
    cache = cache.replace(
        k=tuple(k.at[slots, :, :, :prompt_slots].set(new[sources], mode="drop") for k, new in zip(cache.k, prompt_cache.k)),
        v=tuple(v.at[slots, :, :prompt_slots].set(new[sources], mode="drop") for v, new in zip(cache.v, prompt_cache.v)),
        valid=cache.valid.at[slots].set(valid, mode="drop"),
    )
    keys = row_keys(rng, row_ids)
    tokens, logprobs = program.sample(constrain(logits[sources], ("batch", None)), step_keys(keys, jnp.int32(0)))
    admitted = state.replace(
        cache=constrain_cache(cache),
        rows=state.rows.at[slots].set(rows, mode="drop"),
        keys=state.keys.at[slots].set(keys, mode="drop"),
        steps=state.steps.at[slots].set(0, mode="drop"),
    )

    def by_slot(values, fill):
        return jnp.full(state.live.shape, fill, values.dtype).at[slots].set(values, mode="drop")
    return _record(admitted, by_slot(tokens, 0), by_slot(logprobs, 0.0), by_slot(jnp.ones_like(slots, bool), False))


def _settle_scratch(cache: KVCache, steps: jax.Array, live: jax.Array, prompt_slots: int) -> KVCache:
    """Move the keys/values each slot's step just wrote at the scratch slot C - 1 to the row's
    own slot P + steps - 1 (marked valid where live), and empty the scratch slot again."""
    scratch = cache.max_length - 1
    slot_index = jnp.arange(steps.shape[0])
    position = jnp.minimum(prompt_slots + steps - 1, scratch - 1)
    return cache.replace(
        k=tuple(k.at[slot_index, :, :, position].set(k[..., scratch]) for k in cache.k),
        v=tuple(v.at[slot_index, :, position].set(v[:, :, scratch]) for v in cache.v),
        valid=cache.valid.at[slot_index, position].set(live).at[:, scratch].set(False),
        length=jnp.int32(scratch),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "program", "prompt_slots"), donate_argnames=("state",),
                   compiler_options=ROLLOUT_COMPILER_OPTIONS)
def _refill_decode(graphdef, params, state: SlotState, max_steps, free_to_stop, *, program: Program,
                   prompt_slots: int) -> SlotState:
    """Decode one token per live slot per step, for at most max_steps steps, while a slot
    is live and each of the len(free_to_stop) equal blocks of slots (one per process) has
    fewer than free_to_stop[b] free slots (traced [blocks] int32: no recompilation)."""
    model = nnx.merge(graphdef, params)
    num_slots = state.live.shape[0]

    def running(carry):
        step, s = carry
        free = jnp.sum(~s.live.reshape(free_to_stop.shape[0], -1), axis=1)
        return (step < max_steps) & jnp.any(s.live) & jnp.all(free < free_to_stop)

    def decode_step(carry):
        step, s = carry
        logits, cache = model(s.last_tokens[:, None], jnp.ones((num_slots, 1), jnp.int32), cache=s.cache)
        cache = constrain_cache(_settle_scratch(cache, s.steps, s.live, prompt_slots))
        tokens, logprobs = program.sample(logits[:, 0], step_keys(s.keys, s.steps))
        return step + 1, _record(s.replace(cache=cache, decode_steps=s.decode_steps + 1), tokens, logprobs, s.live)

    return jax.lax.while_loop(running, decode_step, (jnp.int32(0), state))[1]


# The refill scheduler's compiled programs by kind (`entropy_rl.rollout.compile_counts`).
PROGRAMS = {"slots": _empty_slots, "refill_prefill": _refill_prefill, "refill_decode": _refill_decode}


@dataclasses.dataclass(frozen=True)
class RefillPrograms:
    """The refill scheduler's programs for one request shape, each called (or lowered) on
    the arguments after the graphdef, static arguments bound:

    empty_slots (params, stop_token_ids, pad_token_id, max_new_tokens) -> SlotState;
    refill_prefill (params, state, prompt_ids, prompt_mask, sources, slots, rows, row_ids,
    rng) -> SlotState; refill_decode (params, state, max_steps, free_to_stop) -> SlotState.
    """

    empty_slots: BoundProgram
    refill_prefill: BoundProgram
    refill_decode: BoundProgram


def refill_programs(graphdef, program: Program, *, slots: int, cache_slots: int, rows: int,
                    prompt_slots: int) -> RefillPrograms:
    """The programs decoding `rows` output rows through `slots` slots of `cache_slots` cache
    slots, prompts of `prompt_slots` tokens; `program` with decode_segments=1 (the slots'
    cache is whole from the start: one program for any decode_segments)."""
    program = dataclasses.replace(program, decode_segments=1)
    return RefillPrograms(
        empty_slots=BoundProgram(_empty_slots, (graphdef,), {"slots": slots, "cache_slots": cache_slots, "rows": rows,
                                                            "response_slots": program.response_slots}),
        refill_prefill=BoundProgram(_refill_prefill, (graphdef,), {"program": program}),
        refill_decode=BoundProgram(_refill_decode, (graphdef,), {"program": program, "prompt_slots": prompt_slots}))


@dataclasses.dataclass
class RefillSchedule:
    """What one refill run did, filled in by `generate_refill`: its slot batch (all processes'
    slots) stepped decode_steps times (slots * decode_steps row-steps) to sample `tokens`
    tokens (all processes'), in decode_calls calls of the decode program; prefill_calls
    refill prefills admitted the rows."""

    slots: int = 0
    decode_steps: int = 0
    prefill_calls: int = 0
    decode_calls: int = 0
    tokens: int = 0


def agree_across_processes(values: np.ndarray) -> np.ndarray:
    """The element-wise maximum of an int vector over all processes (itself in one process)."""
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).max(axis=0)


@dataclasses.dataclass
class _Schedule:
    """This process's bookkeeping: its rows waiting for a slot (in row order), its live slots."""

    waiting: deque
    live: np.ndarray  # [S / processes] bool: this process's block of the slots

    def admit(self) -> list[tuple[int, int]]:
        """(slot, row) for as many waiting rows as there are free slots, in row order."""
        free = np.flatnonzero(~self.live)
        pairs = [(int(slot), self.waiting.popleft()) for slot in free[: len(self.waiting)]]
        self.live[[slot for slot, _ in pairs]] = True
        return pairs


def generate_refill(
    programs: RolloutPrograms,
    params,
    prompt_ids: np.ndarray,
    prompt_mask: np.ndarray,
    rng: jax.Array,
    config: SamplingConfig,
    *,
    num_rows: int,
    place: Callable[[np.ndarray], jax.Array],
    row_ids: np.ndarray | None = None,
    block: int = 0,
    agree: Callable[[np.ndarray], np.ndarray] = agree_across_processes,
    progress: bool = False,
    schedule: RefillSchedule | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Decode this process's rows 0..num_rows-1 (row r answers prompt_ids[r // config.n],
    left-padded [*, P]; it draws from fold_in(rng, row_ids[r]), row_ids None = r) through
    its `programs.slots / programs.blocks` slots: this process is block `block` of the
    blocks (one per process) of the global slots, output rows and prefill batches (`place`
    builds a global array from each process's block). Prefill batches hold
    `programs.prefill_bucket` prompts per block. Returns the global device arrays tokens
    [programs.rows, R] int32, logprobs [programs.rows, R] float32, lengths [programs.rows]
    int32, stopped [programs.rows] bool, as the static sampler's: this process's rows are the
    block's first num_rows. Runs under the caller's mesh context. progress=True shows (on
    process 0) this process's finished rows / total and tokens/s (all processes');
    `schedule`, when given, is filled in."""
    n, slots, blocks = config.n, programs.slots, programs.blocks
    block_slots = slots // blocks
    row_ids = np.arange(num_rows, dtype=np.int32) if row_ids is None else row_ids
    refill = programs.refill
    state = refill.empty_slots(params, stop_token_array(config), jnp.int32(config.pad_token_id),
                               jnp.int32(config.max_new_tokens))
    queue = _Schedule(deque(range(num_rows)), np.zeros(block_slots, bool))
    chunk = config.progress_chunk if progress else np.iinfo(np.int32).max
    start, finished, prefill_calls, decode_calls = time.perf_counter(), 0, 0, 0
    with tqdm(total=num_rows, desc="rollout", unit="row", disable=not progress or jax.process_index() != 0) as bar:
        while True:
            pairs = queue.admit()
            free_to_stop = np.zeros(blocks, np.int64)  # 0 for other blocks: the maximum is theirs
            free_to_stop[block] = min(n, len(queue.waiting)) if queue.waiting else block_slots + 1
            agreed = agree(np.array([
                queue.live.any() or bool(queue.waiting),
                programs.prefill_bucket(len({row // n for _, row in pairs})) if pairs else 0,
                *free_to_stop,
            ]))
            work, prefill_batch, free_to_stop = agreed[0], agreed[1], agreed[2:]
            if not work:
                break
            if prefill_batch:
                state = _admit(refill.refill_prefill, params, state, pairs, prompt_ids, prompt_mask, row_ids, rng,
                               prefill_batch, n, block, blocks, place)
                prefill_calls += 1
            state = refill.refill_decode(params, state, jnp.int32(chunk), jnp.asarray(free_to_stop, jnp.int32))
            decode_calls += 1
            beat(f"decode segment {decode_calls} of a rollout")
            queue.live = addressable_rows(state.live).astype(bool)
            generated, decode_steps = jax.device_get((state.generated, state.decode_steps))
            now_finished = num_rows - len(queue.waiting) - int(queue.live.sum())
            bar.update(now_finished - finished)
            finished = now_finished
            bar.set_postfix_str(f"{int(generated) / (time.perf_counter() - start):.0f} tok/s")
    if schedule is not None:
        schedule.slots, schedule.decode_steps, schedule.tokens = slots, int(decode_steps), int(generated)
        schedule.prefill_calls, schedule.decode_calls = prefill_calls, decode_calls
    return state.tokens, state.logprobs, state.lengths, state.stopped


def _admit(refill_prefill: BoundProgram, params, state, pairs, prompt_ids, prompt_mask, row_ids, rng, prefill_batch,
           n, block, blocks, place):
    """Run `refill_prefill` for this process's (slot, row) pairs (indices within its block
    `block` of `blocks`): their prompts, each once, padded to prefill_batch prompts
    (repeating the first), and prefill_batch * n admission entries (the unused ones dropped:
    slot S, row N); sources, slots and rows offset to the block's first prompt, slot and row."""
    num_slots, num_rows = state.live.shape[0], state.lengths.shape[0]
    first_slot, first_row = block * num_slots // blocks, block * num_rows // blocks
    prompts = sorted({row // n for _, row in pairs}) or [0]  # [0]: this process admits none
    batch_prompts = prompts + [prompts[0]] * (prefill_batch - len(prompts))
    position = {prompt: block * prefill_batch + index for index, prompt in enumerate(prompts)}
    entries = prefill_batch * n
    sources = np.zeros(entries, np.int32)
    targets = np.full(entries, num_slots, np.int32)
    rows = np.full(entries, num_rows, np.int32)
    keys = np.zeros(entries, np.int32)
    for index, (slot, row) in enumerate(pairs):
        sources[index], targets[index], rows[index] = position[row // n], first_slot + slot, first_row + row
        keys[index] = row_ids[row]
    return refill_prefill(params, state, place(prompt_ids[batch_prompts]), place(prompt_mask[batch_prompts]),
                          place(sources), place(targets), place(rows), place(keys), rng)
