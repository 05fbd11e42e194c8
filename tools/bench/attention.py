"""Causal attention forward+backward: dense against blockwise, time and compiled memory.

    python tools/bench/attention.py [--lengths 512 1024 2048 4096] [--blocks 256 512] [--repeats 3]

Heads of the 168M benchmark model (16 query heads, 8 kv heads, head_dim 64), batch 1, float32.
"dense" is `grouped_attention` (its [B, H, T, T] probabilities kept for the backward pass);
"block N" is `blockwise_causal_attention` with blocks of N tokens. Memory is XLA's compiled
temporary buffer size of the gradient program; times are the interleaved best of
`--repeats` (tools/bench/timing.py), and ratios are against dense at the same length.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from entropy_rl.model.blockwise import blockwise_causal_attention
from entropy_rl.model.layers import causal_padding_mask, grouped_attention
from entropy_rl.parallel import COMPILER_OPTIONS
from timing import best_times

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 64


def gradient_program(attend, length: int):
    """(compiled d/d(q, k, v) of sum(attention), its arguments) for batch 1."""
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, length, HEADS, HEAD_DIM))
    k, v = (jax.random.normal(key, (1, length, KV_HEADS, HEAD_DIM)) for key in keys[1:])
    real = jnp.ones((1, length), bool)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, real)), argnums=(0, 1, 2)),
                   compiler_options=COMPILER_OPTIONS)
    return grad.lower(q, k, v).compile(), (q, k, v)


def candidates(length: int, blocks: list[int]) -> dict:
    """{name: attention(q, k, v, real)}: dense and one blockwise per block size below length."""
    attends = {"dense": lambda q, k, v, real: grouped_attention(q, k, v, causal_padding_mask(real))}
    for block in blocks:
        if block < length:
            attends[f"block {block}"] = (
                lambda q, k, v, real, block=block: blockwise_causal_attention(q, k, v, real, block))
    return attends


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'T':>5} {'':10} {'temp MiB':>9} {'vs dense':>8} {'fwd+bwd ms':>11} {'speed vs dense':>15}")
    for length in args.lengths:
        programs = {name: gradient_program(attend, length)
                    for name, attend in candidates(length, args.blocks).items()}
        memory = {name: program.memory_analysis().temp_size_in_bytes for name, (program, _) in programs.items()}
        wall, _ = best_times({name: lambda p=program, a=arguments: jax.block_until_ready(p(*a))
                              for name, (program, arguments) in programs.items()}, args.repeats)
        for name in programs:
            print(f"{length:5d} {name:10} {memory[name] / 2**20:9.1f} {memory[name] / memory['dense']:8.3f} "
                  f"{wall[name] * 1e3:11.1f} {wall['dense'] / wall[name]:14.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
