#!/usr/bin/env bash
# The methods-by-seeds study of docs/study.md, resumable: rerun the same command after an
# interruption (a finished run is skipped, an interrupted one resumes from its checkpoint).
#
#   tools/study.sh [OUT_DIR]          (default runs/study; run from the repository root)
#   SEEDS="0 1 2" METHODS="grpo stapo" EXTRA_METHODS="" STEPS=100 tools/study.sh ...
#
# METHODS (the five the issue requires) run over every seed first, then EXTRA_METHODS; within
# each group seed-major (every method of seed 0 first, so partial results stay balanced):
#   1. OUT_DIR/warmstart-s<seed>: the warm start alone (configs/study/base.yaml, 0 RL steps),
#      exported to OUT_DIR/warmstart-s<seed>/hf: computed once, shared by every method;
#   2. OUT_DIR/<method>-s<seed>: configs/study/<method>.yaml from that checkpoint, warm start
#      off, so every method starts from the same weights and its held-out "before" is the same.
set -euo pipefail
out=${1:-runs/study}
seeds=${SEEDS:-0 1 2}
methods=${METHODS-grpo stapo sent dapo entropy20}
extra_methods=${EXTRA_METHODS-kl_cov clip_cov justrl}
steps=${STEPS:-100}
common=(logging.tensorboard=false logging.progress_bar=false)
mkdir -p "$out"
warm_start() {  # $1 = seed: OUT_DIR/warmstart-s<seed>/hf, computed once
  local warm=$out/warmstart-s$1
  if [ ! -f "$warm/hf/config.json" ]; then
    echo "[study $(date -u +%H:%M:%S)] warm start seed $1 -> $warm"
    entropy-rl train --config configs/study/base.yaml seed="$1" run_dir="$warm" total_steps=0 "${common[@]}"
    entropy-rl export "$warm" "$warm/hf"
  fi
}
for group in "$methods" "$extra_methods"; do
  for seed in $seeds; do
    for method in $group; do
      warm_start "$seed"
      echo "[study $(date -u +%H:%M:%S)] $method seed $seed -> $out/$method-s$seed"
      entropy-rl train --config "configs/study/$method.yaml" seed="$seed" run_dir="$out/$method-s$seed" \
        total_steps="$steps" model.hf_path="$out/warmstart-s$seed/hf" model.tokenizer=builtin \
        warmstart.enabled=false "${common[@]}" || echo "[study] $method seed $seed FAILED (exit $?); going on"
    done
  done
done
echo "[study $(date -u +%H:%M:%S)] done"
