"""What both schedulers of `generate` share: the compiled-program key, a jitted program with
its static arguments bound, the per-row sampling keys, the cache's sharding and the prefill."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from entropy_rl.model import KVCache
from entropy_rl.model.layers import DECODE_CHUNK_SLOTS
from entropy_rl.parallel import batch_sharding, constrain
from entropy_rl.rollout.batching import round_up
from entropy_rl.rollout.config import SamplingConfig
from entropy_rl.rollout.sampling import sample_tokens

# Each layer's KVCache.k [B, KV, head_dim, S] and .v [B, KV, S, head_dim] by logical axis.
KEYS_AXES = ("batch", "kv_heads", "head_dim", None)
VALUES_AXES = ("batch", "kv_heads", None, "head_dim")

@dataclasses.dataclass(frozen=True)
class Program:
    """The static part of a generation: everything that selects a compiled program."""

    response_slots: int
    decode_segments: int
    temperature: float
    top_k: int
    top_p: float
    mesh: jax.sharding.Mesh | None  # traced under jax.set_mesh(mesh): shardings by logical axes

    @classmethod
    def from_config(cls, config: SamplingConfig, mesh) -> "Program":
        return cls(
            response_slots=round_up(config.max_new_tokens, config.response_bucket),
            decode_segments=config.decode_segments,
            temperature=float(config.temperature),
            top_k=config.top_k,
            top_p=float(config.top_p),
            mesh=mesh,
        )

    def sample(self, logits: jax.Array, keys: jax.Array):
        return sample_tokens(logits, keys, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def cache_sizes(self, prompt_slots: int) -> list[int]:
        """The cache slots of each decode segment, increasing to `cache_slots`.

        Segment i of n holds the P prompt slots and at least the first r_i = ceil(R * i / n)
        response slots, P + r_i rounded up to a multiple of DECODE_CHUNK_SLOTS (so short
        responses take one segment). Decode step s reads slots [0, P + s - 1) and writes
        slot P + s - 1, so the segment runs the steps s <= its size - P.
        """
        ends = {round_up(prompt_slots + -(-self.response_slots * i // self.decode_segments), DECODE_CHUNK_SLOTS)
                for i in range(1, self.decode_segments + 1)}
        return sorted(ends)

    def cache_slots(self, prompt_slots: int) -> int:
        """C: the slots of a whole response's cache (the last segment's; the refill slots'),
        P + R rounded up to whole chunks of the decode attention (DECODE_CHUNK_SLOTS), so a
        row's slots fall in the same whole chunks in the static batch's cache and in the
        refill slots' (`layers._single_query_attention`)."""
        return round_up(prompt_slots + self.response_slots, DECODE_CHUNK_SLOTS)

    def mesh_context(self):
        """jax.set_mesh(mesh), under which `constrain` (here and in the model) shards by name."""
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)


@dataclasses.dataclass(frozen=True)
class BoundProgram:
    """A jitted function with its leading arguments (the graphdef) and static keyword
    arguments bound: `program(*rest)` runs `jitted(*args, *rest, **static)` and
    `program.lower(*rest)` lowers that same call (on arrays or `jax.ShapeDtypeStruct`s),
    so a run and a plan compile the one program."""

    jitted: Callable
    args: tuple = ()
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, *args, **kwargs):
        return self.jitted(*self.args, *args, **self.static, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*self.args, *args, **self.static, **kwargs)

    def eval_shape(self, *args, **kwargs):
        return self.jitted.eval_shape(*self.args, *args, **self.static, **kwargs)


# Every program of the sampler runs at least this many rows on each batch shard. XLA:CPU
# compiles a one-row batch with kernels of its own (a vector-matrix product, degenerate
# batch dimensions) that round a row differently, whereas from two rows on a row's bits do
# not depend on the batch (with ROLLOUT_COMPILER_OPTIONS; tools/bench/batch_invariance.py):
# so the refill and static schedulers give a row the same bits.
MIN_ROWS_PER_SHARD = 2


def batch_rows(rows: int, shards: int) -> int:
    """The rows of a batch holding `rows` rows over `shards` batch shards: a multiple of
    shards, and at least MIN_ROWS_PER_SHARD on each (the extra rows are filler)."""
    return max(round_up(rows, shards), MIN_ROWS_PER_SHARD * shards)


def batch_shards(mesh) -> int:
    """Number of pieces the batch dim is split into on `mesh` (1 without one)."""
    if mesh is None:
        return 1
    axes = batch_sharding(mesh).spec[0]
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def constrain_cache(cache: KVCache) -> KVCache:
    """The cache sharded by logical axes: batch as the activations, kv heads as the weights."""
    return cache.replace(k=tuple(constrain(k, KEYS_AXES) for k in cache.k),
                         v=tuple(constrain(v, VALUES_AXES) for v in cache.v),
                         valid=constrain(cache.valid, ("batch", None)))


def prefill_logits(model, prompt_ids, prompt_mask, max_length):
    """float32 logits [B, V] of the last prompt position, and the cache holding the prompts.

    Only the last position is unembedded: all P would cost P times the unembedding FLOPs
    and memory ([B, P, V], about a quarter of a 168M model's prefill).
    """
    hidden, cache = model.prefill(prompt_ids, prompt_mask, max_length)
    return model.logits(hidden[:, -1:])[:, 0], cache


def row_keys(rng: jax.Array, rows: jax.Array) -> jax.Array:
    """PRNG keys [B] of the rows [B] (global row indices): fold_in(rng, row)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, rows)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
    """The keys [B] rows draw their step's token with: fold_in(keys[r], step[r]); step is a
    scalar (every row at the same step) or [B]. A row's sample thus depends only on the
    row and the step, not on the batch or the slot it runs in."""
    return jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape[:1]))  # raw uint32 keys: [B, 2]


def stop_token_array(config: SamplingConfig) -> jax.Array:
    """int32 [S]: the stop ids padded with -1 to a multiple of 8 (a shape bucket)."""
    stop_ids = list(config.stop_token_ids)
    return jnp.asarray(stop_ids + [-1] * (round_up(len(stop_ids), 8) - len(stop_ids)), jnp.int32)
