"""XLA compiler options of entropy-rl's compiled programs, by backend.

`compiler_options(platform)` gives the options of a program that runs on `platform`
("cpu", "gpu", "tpu"): XLA:CPU options on the CPU, none elsewhere (GPU and TPU programs
compile with their compilers' defaults). `mesh_compiler_options(mesh)` reads the platform
from the mesh's devices. Measured on the 168M benchmark model (tools/bench/):

- xla_cpu_use_xnnpack: matmuls run through XNNPACK's kernels; forward+backward about 1.1x
  faster than with the default dot emitter.
- xla_cpu_copy_insertion_use_region_analysis: without it, copy insertion copies each
  layer's KV cache around a decode step's in-place slot write (a step runs about 3x slower).
"""

from __future__ import annotations

import jax

CPU_COMPILER_OPTIONS = {
    "xla_cpu_use_xnnpack": True,
    "xla_cpu_copy_insertion_use_region_analysis": True,
}

# The sampler's programs: YNNPACK takes only single dots (plain and batched matmuls), not
# its fusions of reductions (norms, softmax, log-softmax) nor of several dots, which round a
# row differently in batches of different sizes; XLA emits those itself. Measured with
# tools/bench/batch_invariance.py: under these options a row's reductions, products by the
# model's [out, in] weights (from 2 rows on) and attention's batched products have the same
# bits in any batch (with LIBRARY_FUSION_TYPE_DOT the prefill attention's batched products
# still did not: 64 prompts against 2-32), so the refill and static schedulers agree bitwise.
ROLLOUT_COMPILER_OPTIONS = {**CPU_COMPILER_OPTIONS, "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

def compiler_options(platform: str) -> dict[str, bool]:
    """The compiler options of a program for `platform`: CPU_COMPILER_OPTIONS on "cpu", else {}."""
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else {}


def traced_platform() -> str:
    """The platform a program being traced will run on: its mesh's devices' under
    jax.set_mesh (e.g. "tpu" when planning for a TPU topology on a CPU host), else JAX's
    default backend. Code that picks an implementation by platform asks this, not
    jax.default_backend(), so a plan compiles what the planned chips would run."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return jax.default_backend() if device is None else device.platform


def mesh_compiler_options(mesh: jax.sharding.Mesh) -> dict[str, bool]:
    """`compiler_options` of the platform of the mesh's devices."""
    return compiler_options(mesh.devices.flat[0].platform)
