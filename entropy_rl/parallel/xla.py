"""XLA compiler options that entropy-rl's compiled programs use (`jax.jit(..., compiler_options=...)`).

Both are XLA:CPU options; GPU and TPU compilers do not read xla_cpu_* options, so the same
programs compile unchanged there. Measured on the 168M benchmark model (tools/bench/):

- xla_cpu_use_xnnpack: matmuls run through XNNPACK's kernels; forward+backward about 1.1x
  faster than with the default dot emitter.
- xla_cpu_copy_insertion_use_region_analysis: without it, copy insertion copies each
  layer's KV cache around a decode step's in-place slot write (a step runs about 3x slower).
"""

COMPILER_OPTIONS = {
    "xla_cpu_use_xnnpack": True,
    "xla_cpu_copy_insertion_use_region_analysis": True,
}
