"""One decode step's collectives and memory, sampling from the training parameters (float32,
FSDP-split) vs from their sampling view (`entropy_rl.rollout.params`: bf16, split for decoding).

Compiles `model(last_tokens, cache=...)` on abstract inputs (no weights) for a TPU topology
with libtpu (`--topology v5p:2x2x1`, on any machine) or for this machine's devices
(`--cpu-devices 8`: simulated CPU devices), over a mesh of all of them on "fsdp" (or
`--tensor` of them on "tensor"), and prints the compiled program's collective bytes per
device (`entropy_rl.plan.collective_bytes`), argument and temporary memory.

    PYTHONPATH=. python tools/bench/sampling_view.py --topology v5p:2x2x1
    PYTHONPATH=. python tools/bench/sampling_view.py --cpu-devices 8 --tensor 2
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", help='a TPU topology such as "v5p:2x2x1" (libtpu)')
    parser.add_argument("--cpu-devices", type=int, default=8, help="simulated CPU devices (without --topology)")
    parser.add_argument("--tensor", type=int, default=1, help="devices on the mesh's tensor axis")
    parser.add_argument("--rows", type=int, default=64, help="decoded rows")
    parser.add_argument("--slots", type=int, default=1024, help="KV-cache slots per row")
    args = parser.parse_args()
    if not args.topology:
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from entropy_rl.model import KVCache, Qwen
    from entropy_rl.model.config import QwenConfig
    from entropy_rl.parallel import MeshConfig, batch_sharding, logical_to_mesh, make_mesh, state_shardings
    from entropy_rl.parallel.sharding import MeshBound
    from entropy_rl.plan import collective_bytes, topology_devices
    from entropy_rl.rollout.decoding import KEYS_AXES, VALUES_AXES
    from entropy_rl.rollout.params import sampling_shardings, view_dtype

    devices = topology_devices(args.topology)[0] if args.topology else jax.devices()
    mesh = make_mesh(MeshConfig(fsdp=-1, tensor=args.tensor), devices=devices)
    # the 168M benchmark model's shape (tools/bench/model.py), 2 layers, bf16 compute
    config = QwenConfig(vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_hidden_layers=2,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=64, tie_word_embeddings=False,
                        dtype="bfloat16", param_dtype="float32")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen(config, rngs=nnx.Rngs(0))))

    def abstract(tree, shardings, dtype=lambda x: x.dtype):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype(x), sharding=s), tree, shardings)

    rows = batch_sharding(mesh)
    cache = jax.eval_shape(lambda: KVCache.zeros(config.num_hidden_layers, args.rows, args.slots,
                                                 config.num_key_value_heads, config.head_dim, config.dtype))
    cache_shardings = KVCache(k=tuple(NamedSharding(mesh, logical_to_mesh(KEYS_AXES, mesh, k.shape)) for k in cache.k),
                              v=tuple(NamedSharding(mesh, logical_to_mesh(VALUES_AXES, mesh, v.shape)) for v in cache.v),
                              valid=rows, length=NamedSharding(mesh, PartitionSpec()))
    cache = abstract(cache, cache_shardings)
    last_tokens = jax.ShapeDtypeStruct((args.rows,), np.int32, sharding=rows)

    def decode_step(p, step_cache, tokens):
        ones = jnp.ones((tokens.shape[0], 1), jnp.int32)
        logits, new_cache = nnx.merge(graphdef, p)(tokens[:, None], ones, cache=step_cache)
        return jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32), new_cache

    views = {"training parameters": abstract(params, state_shardings(params, mesh)),
             "sampling view": abstract(params, sampling_shardings(params, mesh), lambda x: view_dtype(x, config.dtype))}
    measured = {}
    for name, p in views.items():
        program = MeshBound(jax.jit(decode_step, out_shardings=(rows, cache_shardings), donate_argnums=1), mesh)
        compiled = program.lower(p, cache, last_tokens).compile()
        memory = compiled.memory_analysis()
        measured[name] = collective_bytes(compiled.as_text())
        print(f"{args.topology or f'{len(devices)} CPU devices'} mesh {dict(mesh.shape)}, {name}: decode-step "
              f"collectives {measured[name]:,} B/device, arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB, "
              f"temporaries {memory.temp_size_in_bytes / 2**20:.1f} MiB")
    print(f"collective bytes, view / training parameters: {measured['sampling view'] / measured['training parameters']:.4f}")


if __name__ == "__main__":
    main()
