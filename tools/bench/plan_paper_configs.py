"""Plan the paper configs on the TPU meshes they are meant for (`entropy-rl plan`) and print
each per-chip table. Needs libtpu (pip install -e ".[tpu-plan]"); runs on any machine.

    JAX_PLATFORMS=cpu python tools/bench/plan_paper_configs.py [--only stapo-8b ...] [--json-dir DIR]

Takes long: 26 (8B), 27 (14B) and 14 (1.5B) minutes, the three run together on a loaded
2-core machine, most of it the train step's compile (15 min for 8B).
"""

from __future__ import annotations

import argparse
import json
import os
import time

# name: (config files, TPU topology, architecture preset)
RUNS = {
    "stapo-8b": (["configs/paper/stapo_qwen3_8b.yaml", "configs/mesh/tpu_v5p_64.yaml"], "v5p:2x4x4", "qwen3-8b"),
    "stapo-14b": (["configs/paper/stapo_qwen3_14b.yaml", "configs/mesh/tpu_v5p_64.yaml"], "v5p:2x4x4", "qwen3-14b"),
    "sent-1.5b": (["configs/paper/sent_r1_distill_qwen_1.5b.yaml", "configs/mesh/tpu_v4_32.yaml"], "v4:2x2x4",
                  "deepseek-r1-distill-qwen-1.5b"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS), help="the runs to plan")
    parser.add_argument("--json-dir", help="also write each plan as DIR/<name>.json")
    args = parser.parse_args()

    from entropy_rl import plan as planning
    from entropy_rl.train.config import load_config

    for name in args.only:
        configs, topology, preset = RUNS[name]
        start = time.time()
        devices, hbm = planning.topology_devices(topology)
        result = planning.plan(load_config(configs, [], check_paths=False), devices, target=topology,
                               hbm_bytes=hbm, preset=preset, on_program=lambda memory: print(
                                   f"  [{name}, {time.time() - start:.0f} s] {planning.program_line(memory)}", flush=True))
        print(f"== {name}: entropy-rl plan {' '.join('--config ' + c for c in configs)} --topology {topology} "
              f"--model {preset}  ({time.time() - start:.0f} s)")
        print(planning.format_plan(result), flush=True)
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            with open(os.path.join(args.json_dir, f"{name}.json"), "w") as f:
                json.dump(result.to_dict(), f, indent=2)


if __name__ == "__main__":
    main()
