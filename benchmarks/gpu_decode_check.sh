#!/usr/bin/env bash
# The GPU decode check of issue 33 in one call: benchmarks/decode_paths.py on molmoe-1b-shape with the goal check
# (top-8/16 blocks within 3x the HBM floor, top-4/12 saving >= 80% of its active-bytes saving), then the default
# model and qwen3-vl-30b-a3b-shape, each under its own time limit. Needs torch and transformers only (no dvc,
# no lightgbm); installs nothing. From the repository root:
#   OUT=/tmp/out bash benchmarks/gpu_decode_check.sh
# Outputs under $OUT: molmoe.json (with "check"), base.json, qwen3.json and a .log of each run; a run cut by its
# time limit leaves its .log and the JSON of the models it finished.
# PATHS overrides the decode paths compared (default eager,static,graph: each compiled corner costs a compile,
# and graph is the GPU path); BANDWIDTH the HBM TB/s of the floor (default: 3.35 on an H100, 4.8 on an H200).
set -u
OUT=${OUT:-/tmp/knobctl_gpu_decode}
PATHS=${PATHS:-eager,static,graph}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.cuda.is_available())"
BW=${BANDWIDTH:+--bandwidth $BANDWIDTH}

run() {  # name, time limit (s), decode_paths.py arguments
  local name=$1 limit=$2
  shift 2
  local t0
  t0=$(date +%s)
  timeout "$limit" python3 benchmarks/decode_paths.py --device cuda --out "$OUT/$name.json" "$@" \
    > "$OUT/$name.log" 2>&1
  echo "gpu_decode_check: $name exit $? in $(( $(date +%s) - t0 )) s (limit $limit)"
  grep -v -e "it/s]" -e "s/it]" "$OUT/$name.log" | tail -n 25
}

# batched_mm: the experts kernel of issue 33's H200 measurement (4.0 ms per token with the step in one CUDA graph).
# shellcheck disable=SC2086
run molmoe 300 --models molmoe-1b-shape --paths "$PATHS" --experts batched_mm --dtype bfloat16 --context 608 \
  --tokens 16 --rounds 5 --check $BW
run base 75 --models models/base --paths "$PATHS" --experts batched_mm --tokens 16 --rounds 5
run qwen3 150 --models qwen3-vl-30b-a3b-shape --paths "$PATHS" --experts batched_mm --dtype bfloat16 \
  --context 608 --tokens 8 --rounds 3
ls -l "$OUT"
