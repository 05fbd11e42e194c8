"""Benchmark: one decode step of the rollout benchmark's small model (tools/bench/rollout.py
--model small: 4 layers, 2 kv heads, head_dim 64, float32, random weights) with its attention
reading the KV cache in chunks of C slots (`layers._single_query_attention`: a loop up to the
chunk of the last valid slot; the default `layers.DECODE_CHUNK_SLOTS`) against one pass over
the whole cache, compiled with the sampler's ROLLOUT_COMPILER_OPTIONS.

B rows, S cache slots of which the first --valid are valid in every row (the rest are read
only by the one-pass form). Each timing is the best of --repeats of 10 steps, in process CPU
time and wall-clock, the configurations interleaved (tools/bench/timing.py).

    python tools/bench/decode_chunks.py --valid 192 320 --chunks 64 128
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import best_times

from entropy_rl.model import KVCache, Qwen, layers
from entropy_rl.model.config import QwenConfig
from entropy_rl.parallel import ROLLOUT_COMPILER_OPTIONS

SMALL = QwenConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=64)
STEPS = 10


def decode_steps(chunk: int | None, batch: int, slots: int, valid: int):
    """A callable running STEPS decode steps with the attention read in chunks of `chunk`
    slots (None: one pass over the whole cache), compiled here."""
    original = layers.DECODE_CHUNK_SLOTS
    layers.DECODE_CHUNK_SLOTS = slots if chunk is None else chunk
    graphdef, state = nnx.split(Qwen(SMALL, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    cache = KVCache.zeros(SMALL.num_hidden_layers, batch, slots, SMALL.num_key_value_heads, SMALL.head_dim,
                          jnp.float32)
    cache = cache.replace(k=tuple(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in cache.k),
                          v=tuple(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in cache.v),
                          valid=jnp.asarray(np.arange(slots)[None].repeat(batch, 0) < valid),
                          length=jnp.int32(slots - 1))  # writes land in the last slot, as refill's scratch slot

    def step(state, ids, cache):
        _, new_cache = nnx.merge(graphdef, state)(ids, cache=cache)
        return new_cache.replace(valid=cache.valid)  # the written slot stays unseen, as refill settles it

    step = jax.jit(step, donate_argnums=2, compiler_options=ROLLOUT_COMPILER_OPTIONS)
    ids = jnp.zeros((batch, 1), jnp.int32)
    carry = [jax.block_until_ready(step(state, ids, cache))]  # traced now, with this chunk size
    layers.DECODE_CHUNK_SLOTS = original

    def run():
        for _ in range(STEPS):
            carry[0] = step(state, ids, carry[0])
        jax.block_until_ready(carry[0])
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--slots", type=int, default=384, help="cache slots (the benchmark's 128 + 256)")
    parser.add_argument("--valid", type=int, nargs="+", default=[192, 320])
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{jax.default_backend()}, batch {args.batch}, {args.slots} cache slots, best of {args.repeats} x "
          f"{STEPS} steps")
    for valid in args.valid:
        candidates = {f"chunks of {c}": decode_steps(c, args.batch, args.slots, valid) for c in args.chunks}
        candidates["one pass"] = decode_steps(None, args.batch, args.slots, valid)
        wall, cpu = best_times(candidates, args.repeats)
        for name in candidates:
            print(f"valid {valid:4d}  {name:14s}  {cpu[name] / STEPS * 1e3:6.2f} ms CPU  "
                  f"{wall[name] / STEPS * 1e3:6.2f} ms wall per step")


if __name__ == "__main__":
    main()
