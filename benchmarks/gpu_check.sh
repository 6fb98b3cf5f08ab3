#!/usr/bin/env bash
# The GPU numbers of the README's "Big systems" section, on one CUDA device (about 10 min):
# mixed-precision errors, ms per step and peak GPU memory for each precision.
# Not run yet: no GPU was available where these benchmarks were written.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (from the repository root)
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-results/gpu}
mkdir -p "$OUT"
$PY benchmarks/precision.py --device cuda --mixed bf16-mixed fp16-mixed --markdown "$OUT/precision.md"
for p in float32 bf16-mixed fp16-mixed; do
  $PY benchmarks/branches.py --device cuda --batch-sizes 1 8 --repeats 3 --aggregations fused --no-peer \
    --precision "$p" | tee "$OUT/branches_$p.txt"
  $PY benchmarks/memory.py --device cuda --sizes 1500 6000 17600 100000 --branches short long muse --train \
    --precision "$p" --out "$OUT/memory_$p.csv"
done
