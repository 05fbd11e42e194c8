"""A study run's curves in blocks of steps, and STAPO's rule applied to its kept samples.

    python tools/study_curves.py RUN_DIR [--block 10]

From RUN_DIR/metrics.jsonl: per block of steps the means of entropy/mean, entropy/p50,
entropy/p90, reward/mean, response_length/mean, loss/clip_frac_low and loss/masked_fraction
(the method's flag fraction, when it has one). From RUN_DIR/samples.jsonl (the responses the
run keeps per step, with per-token logp and entropy): how many sampled tokens have
p < 0.002 and how many STAPO would flag (advantage > 0, p < 0.002, entropy below the 0.8
quantile of that step's kept tokens; the loss itself uses the whole batch's quantile).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib

import numpy as np

PROB_THRESHOLD, ENTROPY_QUANTILE = 0.002, 0.8  # configs/stapo.yaml


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def print_curves(rows: list[dict], block: int) -> None:
    rows = [row for row in rows if "entropy/mean" in row]
    keys = ["entropy/mean", "entropy/p50", "entropy/p90", "reward/mean", "response_length/mean",
            "loss/clip_frac_low", "loss/masked_fraction"]
    print("| steps | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        cells = [np.mean([r[k] for r in chunk if k in r]) if any(k in r for r in chunk) else math.nan for k in keys]
        print(f"| {chunk[0]['step']}-{chunk[-1]['step']} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


def print_stapo_rule(samples: list[dict]) -> None:
    by_step = collections.defaultdict(list)
    for sample in samples:
        by_step[sample["step"]].append(sample)
    tokens = rare = flagged = 0
    for step_samples in by_step.values():
        threshold = np.quantile(np.concatenate([s["entropy"] for s in step_samples]), ENTROPY_QUANTILE)
        for s in step_samples:
            logp, entropy = np.asarray(s["logp"]), np.asarray(s["entropy"])
            is_rare = logp < math.log(PROB_THRESHOLD)
            tokens, rare = tokens + len(logp), rare + int(is_rare.sum())
            flagged += int((is_rare & (entropy < threshold)).sum()) if s["advantage"] > 0 else 0
    if tokens:
        print(f"kept samples of steps {min(by_step)}-{max(by_step)}: {tokens} tokens, p < {PROB_THRESHOLD}: "
              f"{rare} ({rare / tokens:.3%}), STAPO's rule: {flagged} ({flagged / tokens:.3%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=pathlib.Path)
    parser.add_argument("--block", type=int, default=10)
    args = parser.parse_args()
    print_curves(read_jsonl(args.run_dir / "metrics.jsonl"), args.block)
    print_stapo_rule(read_jsonl(args.run_dir / "samples.jsonl"))


if __name__ == "__main__":
    main()
