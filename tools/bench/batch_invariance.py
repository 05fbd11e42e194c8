"""Which XLA:CPU ops round a row differently in batches of different sizes.

For each op f (a matmul by an argument weight stored [N, K] as the model's and [K, N], a
row sum, a log-softmax, attention's batched products), the rows 0-1 of f(x[:M]) against
f(x[:2]) for M in 1..256, compiled with entropy-rl's CPU_COMPILER_OPTIONS and with the
sampler's ROLLOUT_COMPILER_OPTIONS (YNNPACK restricted to dots); and a row of an
[M, K] @ [N, K]^T product (M up to 8192) against the same row in a 2-row product, at
several positions. The refill scheduler's log-probs equal the static ones bitwise only if
every op of a decode step is batch-invariant (see entropy_rl/rollout/refill.py).

    PYTHONPATH=. JAX_PLATFORMS=cpu python tools/bench/batch_invariance.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl.parallel import CPU_COMPILER_OPTIONS, ROLLOUT_COMPILER_OPTIONS

SIZES = (1, 2, 3, 4, 5, 7, 8, 13, 16, 19, 28, 32, 33, 48, 63, 64, 65, 100, 128, 256)


def variant_sizes(op, inputs: list[np.ndarray], options: dict) -> list[int]:
    """The batch sizes M whose rows 0-1 of op(*inputs[:M]) differ from those of a 2-row batch
    (the first input is batched; the others, e.g. a weight, are shared)."""
    compiled = jax.jit(op, compiler_options=options)
    first, *shared = inputs
    reference = np.asarray(compiled(first[:2], *shared))
    return [m for m in SIZES
            if not np.array_equal(np.asarray(compiled(first[:m], *shared))[:2], reference[:min(m, 2)])]


def large_batch_rows_differ(k: int, n: int, rng, batch: int = 8192) -> list[int]:
    """The positions (of a few, in batches up to `batch`) whose row of x[:M] @ w^T (w [n, k])
    differs from the same row computed in a 2-row product, with ROLLOUT_COMPILER_OPTIONS."""
    x, weight = rng.standard_normal((batch, k), np.float32), rng.standard_normal((n, k), np.float32)
    matmul = jax.jit(lambda x, w: x @ w.T, compiler_options=ROLLOUT_COMPILER_OPTIONS)
    whole = np.asarray(matmul(x, weight))
    return [row for row in (1, 100, 1000, 5000, batch - 1)
            if not np.array_equal(np.asarray(matmul(x[row - 1:row + 1], weight))[1], whole[row])]


def main() -> None:
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape, np.float32)

    batch = max(SIZES)
    ops = {f"x [M, {k}] @ w [{n}, {k}]^T": (lambda x, w: x @ w.T, [normal(batch, k), normal(n, k)])
           for k, n in ((32, 8), (256, 1024), (1024, 3072), (3072, 1024))}
    ops |= {f"x [M, {k}] @ w [{k}, {n}]": (lambda x, w: x @ w, [normal(batch, k), normal(k, n)])
            for k, n in ((32, 8), (1024, 3072))}
    ops |= {
        "sum over 128": (lambda x: jnp.sum(x, -1), [normal(batch, 128)]),
        "log-softmax over 1024": (lambda x: jax.nn.log_softmax(x, -1), [normal(batch, 1024)]),
        "softmax over [2, 2, 56]": (lambda x: jax.nn.softmax(x, -1), [normal(batch, 2, 2, 56)]),
        # 2 grouped queries and 56 cached keys per (row, kv head): q = x[:, :, :2], k = x[:, :, 2:]
        "scores bkmd,bksd->bkms": (lambda x: jnp.einsum("bkmd,bksd->bkms", x[:, :, :2], x[:, :, 2:]),
                                   [normal(batch, 2, 58, 8)]),
    }
    print("op: batch sizes M whose rows differ from a 2-row batch's")
    for name, (op, inputs) in ops.items():
        print(f"  {name:<32} CPU_COMPILER_OPTIONS {variant_sizes(op, inputs, CPU_COMPILER_OPTIONS)}; "
              f"ROLLOUT_COMPILER_OPTIONS {variant_sizes(op, inputs, ROLLOUT_COMPILER_OPTIONS)}")
    for k, n in ((1024, 3072), (3072, 1024)):
        print(f"  rows of [8192, {k}] @ [{n}, {k}]^T differing from a 2-row product's: "
              f"{large_batch_rows_differ(k, n, rng) or 'none'}")


if __name__ == "__main__":
    main()
