#!/usr/bin/env bash
# The update-phase ratio of tools/bench/packing.py (old log-probs + one train step, packed vs
# padded, interleaved) on one GPU or TPU, in a few minutes: a 12-layer 1024-wide Qwen3-shaped
# model in bfloat16, 128 responses of up to 4096 tokens after 256-token prompts, padded
# micro-batches of 16 responses (packed: as many tokens). ATTENTION=pallas_gpu (or splash,
# blockwise, ...) picks the attention (default auto: cuDNN on GPU, splash on TPU).
#   tools/bench/packing_device.sh 2>&1 | tee packing_device.log
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="${PYTHONPATH:-$(cd ../.. && pwd)}"
for lengths in lognormal skewed; do
  python packing.py --lengths "$lengths" --prompts 32 --n 4 --prompt 256 --new-tokens 4096 --micro 16 \
    --layers 12 --hidden 1024 --vocab 32768 --dtype bfloat16 --attention "${ATTENTION:-auto}" --repeats 3
done
