"""Causal attention forward+backward on one GPU or TPU: time and memory per implementation.

    python tools/bench/attention_device.py [--lengths 4096 16384] [--repeats 5]

Qwen3-8B's attention shapes (32 query heads, 8 kv heads, head_dim 128), batch 1, bfloat16,
a right-padded row (the last 1/8 of the tokens padding). Implementations: those of the
backend (GPU: dense, blockwise, cudnn, pallas_gpu; TPU: dense, blockwise, splash). Per
implementation and length: the best forward+backward wall time of `--repeats` interleaved
rounds (tools/bench/timing.py) and the compiled temporary memory; at the end, the device's
peak bytes in use over the whole run (where the backend reports it). A program that does not compile or
run (e.g. dense attention's [1, 32, T, T] probabilities out of memory) is reported with its
error. Ratios are against blockwise at the same length. Written to finish in under 5 minutes
on one H100/H200 or TPU chip.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from entropy_rl.model.attention import causal_attention
from timing import best_times

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BLOCK = 512
BY_BACKEND = {"gpu": ("dense", "blockwise", "cudnn", "pallas_gpu"), "tpu": ("dense", "blockwise", "splash")}


def compiled(implementation: str, length: int):
    """(compiled d/d(q, k, v) of a weighted sum of attention, its arguments)."""
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, length, HEADS, HEAD_DIM), jnp.bfloat16)
    k, v = (jax.random.normal(key, (1, length, KV_HEADS, HEAD_DIM), jnp.bfloat16) for key in keys[1:3])
    real = jnp.arange(length)[None] < length - length // 8
    weights = jax.random.normal(keys[3], q.shape, jnp.bfloat16)

    def loss(q, k, v):
        out = causal_attention(q, k, v, real, BLOCK, implementation)
        return jnp.sum((out * weights).astype(jnp.float32))

    program = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return program, (q, k, v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    if backend not in BY_BACKEND:
        raise SystemExit(f"attention_device.py needs a GPU or TPU; the backend is {backend!r}")
    device = jax.devices()[0]
    print(f"{device.device_kind}, jax {jax.__version__}")
    print(f"{'T':>6} {'':11} {'fwd+bwd ms':>11} {'vs blockwise':>12} {'temp MiB':>9}")
    for length in args.lengths:
        programs, failed = {}, {}
        for name in BY_BACKEND[backend]:
            try:
                programs[name] = compiled(name, length)
                jax.block_until_ready(programs[name][0](*programs[name][1]))
            except Exception as error:  # noqa: BLE001 - reported, e.g. out of memory
                programs.pop(name, None)
                failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        wall, _ = best_times({name: lambda p=program, a=arguments: jax.block_until_ready(p(*a))
                              for name, (program, arguments) in programs.items()}, args.repeats)
        for name in BY_BACKEND[backend]:
            if name in failed:
                print(f"{length:6d} {name:11} {failed[name]}")
                continue
            temp = programs[name][0].memory_analysis().temp_size_in_bytes
            speedup = f"{wall['blockwise'] / wall[name]:11.2f}x" if "blockwise" in wall else f"{'-':>12}"
            print(f"{length:6d} {name:11} {wall[name] * 1e3:11.2f} {speedup} {temp / 2**20:9.1f}")
        del programs
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
    print("device peak MiB in use:", "not reported" if peak is None else f"{peak / 2**20:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
