#!/usr/bin/env bash
# GPU check in one call: true-size profile, estimator fit and the end-to-end rt.answer check.
# On a machine without dvc, from the repository root (lightgbm carried as a wheel in .whl/):
#   OUT=/tmp/out bash benchmarks/gpu_profile.sh [params.yaml]
# Outputs under $OUT: profile/{latency,summary}.parquet, profile/metrics.json, estimator.json, e2e.json.
set -u
PARAMS=${1:-benchmarks/gpu_params.yaml}
OUT=${OUT:-/tmp/knobctl_gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, transformers, lightgbm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightgbm', lightgbm.__version__)"
T0=$(date +%s)
python3 stages/profile_latency.py --params "$PARAMS" --out "$OUT/profile" --metrics "$OUT/profile/metrics.json" \
  --cache "$OUT/cache" 2> >(grep -v -e "it/s]" -e "s/it]" >&2)
T1=$(date +%s)
python3 stages/fit_estimator.py --params "$PARAMS" --profile "$OUT/profile/summary.parquet" --out /tmp/knobctl_est \
  --metrics "$OUT/estimator.json" --plots /tmp/knobctl_plots
python3 benchmarks/e2e_latency.py --params "$PARAMS" --estimator /tmp/knobctl_est --data none --configs 20 \
  --repeats ${E2E_REPEATS:-3} --out "$OUT/e2e.json"
T2=$(date +%s)
echo "gpu_profile: profile $((T1 - T0)) s, estimator + e2e $((T2 - T1)) s"
