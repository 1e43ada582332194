#!/usr/bin/env bash
# GPU workers in one command, on one GPU machine (about 5 minutes; under 8):
#   1. tests/gpu: deterministic CUDA kernels of every built-in model, local vs Ray digests on the GPU,
#      exact deletion on Ray actors sharing the GPU (backend.num_gpus = 0.25), `verify` MATCH;
#   2. the round-time benchmark with the workers on the GPU (bench/scale.py --device cuda, small sizes).
#
#   bash bench/gpu.sh [OUT_DIR]      # OUT_DIR (default bench/results) receives gpu_scale.md
#
# Exits non-zero if there is no CUDA device, if a test fails, or if the benchmark fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: no CUDA device (torch.cuda.is_available() is False)" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== tests/gpu" >&2
timeout 300 python -m pytest -q -p no:cacheprovider -rs tests/gpu

echo "== bench/scale.py --device cuda" >&2
timeout 180 python bench/scale.py --device cuda --workers 4,8 --rounds 20 --warmup 5 \
    --samples-per-worker 300 --out "$out/gpu_scale.md"
