"""Cost of the checkpoint checksums (issue 29): save and restore of the default tiny policy and
of a larger random parameter tree, with the time spent in `array_digests` (checksums at save,
verification at restore) measured apart. CPU time is the process's (user + sys).

    python tools/checksum_cost.py [--large-mb 1024]
"""

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropy_rl import checkpoints
from entropy_rl.policy import build_policy
from entropy_rl.train import checkpoint as ck
from entropy_rl.train.config import load_config


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, params, config) -> None:
    digests = {"n": 0, "wall": 0.0, "cpu": 0.0}
    original = checkpoints.array_digests

    def counted(items):
        result, wall, cpu = _timed(lambda: original(items))
        digests["n"] += 1
        digests["wall"] += wall
        digests["cpu"] += cpu
        return result

    ck.array_digests = checkpoints.array_digests = counted  # save's and restore's
    size = sum(x.nbytes for x in jax.tree.leaves(params)) / 2**20
    with tempfile.TemporaryDirectory() as run_dir, ck.Checkpointer(run_dir, async_save=False) as saver:
        state = {"step": jnp.int32(1)}
        _, save_wall, save_cpu = _timed(lambda: saver.save(1, params=params, train_state=state, data_state={},
                                                           config=config))
        at_save = dict(digests)
        digests.update(n=0, wall=0.0, cpu=0.0)
        _, restore_wall, restore_cpu = _timed(lambda: saver.restore_params(params, step=1))
    ck.array_digests = checkpoints.array_digests = original
    print(f"{name}: {len(jax.tree.leaves(params))} arrays, {size:.1f} MiB")
    print(f"  save    {save_wall:6.2f} s wall {save_cpu:6.2f} s CPU, of which checksums {at_save['wall']:5.2f} s wall "
          f"{at_save['cpu']:5.2f} s CPU ({100 * at_save['wall'] / save_wall:.0f}% of the wall time)")
    print(f"  restore {restore_wall:6.2f} s wall {restore_cpu:6.2f} s CPU, of which verification {digests['wall']:5.2f} s "
          f"wall {digests['cpu']:5.2f} s CPU ({100 * digests['wall'] / restore_wall:.0f}% of the wall time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mb", type=int, default=1024, help="size of the larger random tree (float32)")
    args = parser.parse_args()
    config = load_config(overrides=["run_dir=unused"])
    _, params = nnx.split(build_policy(config.model, seed=0)[0])
    measure("default tiny policy", params, config)
    rng = np.random.default_rng(0)
    rows = args.large_mb * 2**20 // 4 // 4096 // 16
    large = {f"layer{i}": jnp.asarray(rng.standard_normal((rows, 4096), np.float32)) for i in range(16)}
    measure(f"random float32 tree of {args.large_mb} MiB", large, config)


if __name__ == "__main__":
    main()
