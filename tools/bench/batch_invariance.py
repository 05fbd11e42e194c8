"""Which XLA:CPU ops round a row differently in batches of different sizes.

For each op f (a matmul by an argument weight, a row sum, a softmax, attention's batched
products), the rows 0-1 of f(x[:M]) against f(x[:2]) for M in 1..256, compiled with
entropy-rl's COMPILER_OPTIONS and with YNNPACK restricted to dots
(`xla_cpu_experimental_ynn_fusion_type: LIBRARY_FUSION_TYPE_DOT`), and a row of a
fixed-shape [T, K] @ [K, N] product placed at each of its T positions. The refill
scheduler's log-probs equal the static ones bitwise only if every op of a decode step is
batch-invariant (see entropy_rl/rollout/refill.py).

    PYTHONPATH=. JAX_PLATFORMS=cpu python tools/bench/batch_invariance.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from entropy_rl.parallel import COMPILER_OPTIONS

SIZES = (1, 2, 3, 4, 5, 7, 8, 13, 16, 19, 28, 32, 33, 48, 63, 64, 65, 100, 128, 256)
YNN_DOT_ONLY = {**COMPILER_OPTIONS, "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def variant_sizes(op, inputs: list[np.ndarray], options: dict) -> list[int]:
    """The batch sizes M whose rows 0-1 of op(*inputs[:M]) differ from those of a 2-row batch
    (the first input is batched; the others, e.g. a weight, are shared)."""
    compiled = jax.jit(op, compiler_options=options)
    first, *shared = inputs
    reference = np.asarray(compiled(first[:2], *shared))
    return [m for m in SIZES
            if not np.array_equal(np.asarray(compiled(first[:m], *shared))[:2], reference[:min(m, 2)])]


def position_invariant(tile: int, k: int, n: int, rng) -> bool:
    """Whether one row gives the same result at every row of a [tile, k] @ [k, n] product."""
    weight, row = rng.standard_normal((k, n), np.float32), rng.standard_normal(k, np.float32)
    matmul = jax.jit(lambda x, w: x @ w, compiler_options=COMPILER_OPTIONS)
    results = []
    for position in range(tile):
        x = rng.standard_normal((tile, k), np.float32)
        x[position] = row
        results.append(np.asarray(matmul(x, weight))[position])
    return all(np.array_equal(result, results[0]) for result in results)


def main() -> None:
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape, np.float32)

    batch = max(SIZES)
    ops = {f"matmul [M, {k}] @ [{k}, {n}]": (lambda x, w: x @ w, [normal(batch, k), normal(k, n)])
           for k, n in ((32, 8), (256, 1024), (1024, 3072), (3072, 1024))}
    ops |= {
        "sum over 128": (lambda x: jnp.sum(x, -1), [normal(batch, 128)]),
        "softmax over [2, 2, 56]": (lambda x: jax.nn.softmax(x, -1), [normal(batch, 2, 2, 56)]),
        # 2 grouped queries and 56 cached keys per (row, kv head): q = x[:, :, :2], k = x[:, :, 2:]
        "scores bkmd,bksd->bkms": (lambda x: jnp.einsum("bkmd,bksd->bkms", x[:, :, :2], x[:, :, 2:]),
                                   [normal(batch, 2, 58, 8)]),
    }
    print("op: batch sizes M whose rows differ from a 2-row batch's")
    for name, (op, inputs) in ops.items():
        print(f"  {name:<32} options {variant_sizes(op, inputs, COMPILER_OPTIONS)}; "
              f"YNN dots only {variant_sizes(op, inputs, YNN_DOT_ONLY)}")
    for tile, k, n in ((8, 256, 1024), (64, 1024, 3072)):
        print(f"  a row at each of the {tile} rows of [{tile}, {k}] @ [{k}, {n}]: "
              f"{'the same' if position_invariant(tile, k, n, rng) else 'DIFFERS'}")


if __name__ == "__main__":
    main()
