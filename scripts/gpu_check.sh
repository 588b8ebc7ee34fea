#!/usr/bin/env bash
# GPU check: throughput of the full-size GLaMM (random weights, bf16, SDPA attention) through the
# runner's own loop (static and continuous batches), then the test suite's gpu-marked tests. About
# 8 minutes on one H200 (not yet timed with the continuous rows); exits 0
# with a message where there is no CUDA device.
#
#   scripts/gpu_check.sh              # writes results/gpu/<device-name>/throughput.json
#   PY=python scripts/gpu_check.sh    # another interpreter than .venv/bin/python
#
# The model is conf/model/glamm_full_random.yaml (Vicuna-7B, CLIP ViT-L/14-336, SAM ViT-H at the
# released sizes, seeded random weights; its scripted answer makes every image produce a phrase
# and a SAM mask) on generated images; 32 new tokens per image keep the check short.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here; skipping (nothing measured)"
    exit 0
fi

DEVICE=$("$PY" -c 'import re, torch; print(re.sub(r"[^A-Za-z0-9._-]+", "-", torch.cuda.get_device_name()))')
OUT=results/gpu/$DEVICE
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT
mkdir -p "$OUT"
echo "gpu_check: $DEVICE -> $OUT"

# 16 generated images; every pruner at three keeps (none once), batch 1 and 16, four workers.
timeout 420 "$PY" scripts/bench_throughput.py \
    --model glamm_full_random --data synthetic --data-root "$DATA" --images 16 \
    --pruners none,fastv,pdrop,altp --keeps 0.1,0.25,0.5 --batch-sizes 1,16 --workers 4 --threads 4 \
    --set model.device=cuda model.dtype=bfloat16 model.max_new_tokens=32 \
    --json "$OUT/throughput.json"

# Continuous vs static batches at 16 and 64 slots. The full-size model's scripted answers all have
# one length (this row measures the overhead of the rows' padded attention, not the gain); the
# shapes model's trained answers differ in length, so its rows show the refills' gain on the GPU.
timeout 300 "$PY" scripts/bench_throughput.py \
    --model glamm_full_random --data synthetic --data-root "$DATA/full" --images 64 --warmup 1 \
    --pruners fastv,altp --keeps 0.1 --batch-sizes 16,64 --batching static,continuous --workers 4 --threads 4 \
    --set model.device=cuda model.dtype=bfloat16 model.max_new_tokens=32 \
    --json "$OUT/continuous_full.json"
timeout 240 "$PY" scripts/bench_throughput.py \
    --model glamm_shapes --data shapes_val --images 128 --warmup 1 \
    --pruners fastv --keeps 0.1 --batch-sizes 1,16,64 --batching static,continuous --workers 4 --threads 4 \
    --set model.device=cuda \
    --json "$OUT/continuous_shapes.json"

OMP_NUM_THREADS=1 timeout 240 "$PY" -m pytest -q -m gpu tests/test_gpu.py
echo "gpu_check: done; rows in $OUT/throughput.json, $OUT/continuous_full.json, $OUT/continuous_shapes.json"
