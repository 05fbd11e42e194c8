"""Causal attention forward+backward by implementation: CPU time and compiled memory, and
the compiled memory of the same program for a TPU chip (libtpu ahead-of-time, from this host).

    python tools/bench/attention.py [--lengths 512 1024 2048 4096] [--blocks 256 512] [--repeats 3]
                                    [--tpu v5p:2x2x1 | --tpu none]

Heads of the 168M benchmark model (16 query heads, 8 kv heads, head_dim 64), batch 1, float32.
"dense" is `grouped_attention` (its [B, H, T, T] probabilities kept for the backward pass);
"block N" is `blockwise_causal_attention` with blocks of N tokens; "splash" is the Pallas TPU
kernel (blocks of 512 tokens, or T rounded up to 128 below that), which runs here only in
interpret mode (not a speed figure), so it has a TPU column only. Memory is XLA's compiled
temporary buffer size of the gradient program ("temp MiB" on this CPU, "TPU MiB" compiled
for one chip of `--tpu`); times are the interleaved best of `--repeats`
(tools/bench/timing.py), and ratios are against dense at the same length. The GPU kernels
(cuDNN, Pallas GPU) need a GPU: tools/bench/attention_device.py.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from entropy_rl.model.attention import causal_attention
from entropy_rl.parallel import CPU_COMPILER_OPTIONS
from timing import best_times

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 64
SPLASH_BLOCK = 512


def gradient(implementation: str, block: int):
    """d/d(q, k, v) of sum(causal attention) over all-real tokens."""
    def loss(q, k, v):
        real = jnp.ones(q.shape[:2], bool)
        return jnp.sum(causal_attention(q, k, v, real, block, implementation))

    return jax.grad(loss, argnums=(0, 1, 2))


def candidates(length: int, blocks: list[int]) -> dict:
    """{name: (implementation, block)}: dense, one blockwise per block size below length, splash."""
    named = {"dense": ("dense", length)}
    named.update({f"block {block}": ("blockwise", block) for block in blocks if block < length})
    named["splash"] = ("splash", SPLASH_BLOCK)
    return named


def arguments(length: int, device=None):
    """q [1, T, H, D], k/v [1, T, KV, D]: random arrays, or shape structs on `device`."""
    shapes = [(1, length, HEADS, HEAD_DIM)] + [(1, length, KV_HEADS, HEAD_DIM)] * 2
    if device is not None:
        sharding = jax.sharding.SingleDeviceSharding(device)
        return [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding) for shape in shapes]
    keys = jax.random.split(jax.random.key(0), 3)
    return [jax.random.normal(key, shape) for key, shape in zip(keys, shapes)]


def tpu_device(topology: str):
    """The first chip of a TPU topology description (no TPU needed), or None."""
    if topology == "none":
        return None
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes may hold libtpu
    from jax.experimental import topologies
    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--blocks", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tpu", default="v5p:2x2x1", help="TPU topology to compile for, or 'none'")
    args = parser.parse_args(argv)
    tpu = tpu_device(args.tpu)
    print(f"{'T':>5} {'':10} {'temp MiB':>9} {'vs dense':>8} {'fwd+bwd ms':>11} {'speed vs dense':>15}"
          f" {'TPU MiB':>9} {'vs dense':>8}")
    for length in args.lengths:
        named = candidates(length, args.blocks)
        on_cpu = {name: jax.jit(gradient(*spec), compiler_options=CPU_COMPILER_OPTIONS).lower(
                      *arguments(length)).compile()
                  for name, spec in named.items() if spec[0] != "splash"}
        cpu_memory = {name: program.memory_analysis().temp_size_in_bytes for name, program in on_cpu.items()}
        inputs = arguments(length)
        wall, _ = best_times({name: lambda p=program: jax.block_until_ready(p(*inputs))
                              for name, program in on_cpu.items()}, args.repeats)
        tpu_memory = {}
        if tpu is not None:
            tpu_memory = {name: jax.jit(gradient(*spec)).lower(*arguments(length, tpu)).compile()
                          .memory_analysis().temp_size_in_bytes for name, spec in named.items()}
        for name in named:
            cpu = (f"{cpu_memory[name] / 2**20:9.1f} {cpu_memory[name] / cpu_memory['dense']:8.3f} "
                   f"{wall[name] * 1e3:11.1f} {wall['dense'] / wall[name]:14.2f}x") if name in on_cpu else (
                   f"{'-':>9} {'-':>8} {'-':>11} {'-':>15}")
            on_tpu = (f" {tpu_memory[name] / 2**20:9.1f} {tpu_memory[name] / tpu_memory['dense']:8.3f}"
                      if tpu_memory else "")
            print(f"{length:5d} {name:10} {cpu}{on_tpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
