"""Benchmark: chunked vs naive log-prob + entropy, forward and backward, on this machine.

Both compute ``sum(logp) + 0.1 * sum(H)`` and its gradient w.r.t. the hidden states [N, D]
and the unembedding [V, D] (``--wrt hidden``: the hidden states only, as with a frozen
unembedding); the naive one materialises the [N, V] logits. Each method runs
in its own subprocess; after the inputs are created the kernel's peak-RSS mark is reset
(/proc/self/clear_refs), and "peak extra" is the peak resident memory during the runs minus
the resident memory before them. XLA's compiled memory analysis gives
the working memory (temporaries, excluding inputs and the gradient outputs both methods
must return). Ratios are chunked / naive, measured in the same run.

  python tools/bench/token_stats.py [--tokens 2048 --hidden 2048 --vocab 151936
                                     --chunk-sizes 4096 8192 --repeats 2 --wrt all]
"""

import argparse
import json
import re
import subprocess
import sys
import time

GIB = 1024**3


def _objective(method: str, chunk_size: int, wrt: str):
    """jit(value_and_grad) of sum(logp) + 0.1 sum(H) w.r.t. hidden (and unembedding)."""
    import jax
    import jax.numpy as jnp

    from entropy_rl.losses import chunked_logprobs_and_entropy, logprobs_and_entropy

    def stats(hidden, unembedding, targets):
        if method == "naive":
            return logprobs_and_entropy(hidden @ unembedding.T, targets)
        return chunked_logprobs_and_entropy(hidden, unembedding, targets, chunk_size=chunk_size)

    def objective(hidden, unembedding, targets):
        logp, entropy = stats(hidden, unembedding, targets)
        return jnp.sum(logp) + 0.1 * jnp.sum(entropy)

    return jax.jit(jax.value_and_grad(objective, argnums=(0, 1) if wrt == "all" else 0))


def _memory_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in bytes."""
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) * 1024


def _reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run_worker(args) -> dict:
    """Measures one method in this process; returns the figures as a dict."""
    import jax
    import jax.numpy as jnp

    fn = _objective(args.worker, args.chunk_size, args.wrt)
    keys = jax.random.split(jax.random.key(0), 3)
    make_inputs = jax.jit(
        lambda: (
            jax.random.normal(keys[0], (args.tokens, args.hidden), jnp.float32),
            0.02 * jax.random.normal(keys[1], (args.vocab, args.hidden), jnp.float32),
            jax.random.randint(keys[2], (args.tokens,), 0, args.vocab),
        )
    )
    inputs = jax.block_until_ready(make_inputs())
    compiled = fn.lower(*inputs).compile()
    analysis = compiled.memory_analysis()
    _reset_peak_memory()
    baseline = _memory_bytes("VmRSS")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        value, grads = jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - start)
        del value, grads
    return {
        "method": args.worker,
        "chunk_size": args.chunk_size,
        "seconds": min(times),
        "peak_extra_bytes": _memory_bytes("VmHWM") - baseline,
        "xla_temp_bytes": analysis.temp_size_in_bytes,
        "xla_output_bytes": analysis.output_size_in_bytes,
    }


def _measure(args, method: str, chunk_size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--chunk-size",
        str(chunk_size),
        "--tokens",
        str(args.tokens),
        "--hidden",
        str(args.hidden),
        "--vocab",
        str(args.vocab),
        "--repeats",
        str(args.repeats),
        "--wrt",
        args.wrt,
    ]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--chunk-size", type=int, default=8192, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the minimum is kept")
    parser.add_argument(
        "--wrt",
        choices=["all", "hidden"],
        default="all",
        help="differentiate w.r.t. hidden and unembedding, or hidden only",
    )
    parser.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    print(
        f"N={args.tokens} tokens, D={args.hidden}, V={args.vocab}, float32, "
        f"forward+backward w.r.t. {'hidden and unembedding' if args.wrt == 'all' else 'hidden'}"
        f", min of {args.repeats} runs",
        flush=True,
    )
    naive = _measure(args, "naive", 0)
    header = (
        f"{'method':>16} {'time s':>8} {'x naive':>8} {'peak extra GiB':>15} {'x naive':>8}"
        f" {'XLA temp GiB':>13} {'x naive':>8} {'temp+out x naive':>17}"
    )
    print(header, flush=True)
    naive_total = naive["xla_temp_bytes"] + naive["xla_output_bytes"]
    for chunk_size in [None] + args.chunk_sizes:
        row = naive if chunk_size is None else _measure(args, "chunked", chunk_size)
        name = row["method"] + ("" if row["method"] == "naive" else f" c={row['chunk_size']}")
        total = row["xla_temp_bytes"] + row["xla_output_bytes"]
        print(
            f"{name:>16} {row['seconds']:8.2f} {row['seconds'] / naive['seconds']:8.3f}"
            f" {row['peak_extra_bytes'] / GIB:15.3f}"
            f" {row['peak_extra_bytes'] / naive['peak_extra_bytes']:8.3f}"
            f" {row['xla_temp_bytes'] / GIB:13.3f}"
            f" {row['xla_temp_bytes'] / naive['xla_temp_bytes']:8.3f}"
            f" {total / naive_total:17.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
