#!/usr/bin/env bash
# The tiny model's latency-side pipeline on a GPU, in one call: profile -> estimator -> controller
# (trained on the CPU against the committed data/rollouts and the GPU estimator) -> validate,
# then the controller_speed benchmark with the online model on the GPU.
# A GPU's clock is steady where the 2-core CPU's swings 1.0-2.3x, so the violation goal can be
# read off this run. On a machine without dvc, from the repository root, carrying models/base,
# data/vqa, data/rollouts and lightgbm as a wheel in .whl/:
#   OUT=/tmp/out bash benchmarks/gpu_validate.sh
# Outputs under $OUT: profile.json, estimator.json, train.json, validate.json, requests.parquet,
# speed.txt and log.txt.
# DEVICE=cpu PROFILE_SET="rounds=1" VALIDATE_SET="num_samples=3" SPEED_ARGS="--steps 20 --cells 5 --repeats 1"
# is a quick dry run of the same commands on a CPU.
set -u
OUT=${OUT:-/tmp/knobctl_gpu}
DEVICE=${DEVICE:-cuda}
W=/tmp/knobctl_work
mkdir -p "$OUT" "$W"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
quiet() { grep -a -v -e "/s]" -e "s/it]" -e "it/s, " >&2; }
export TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, lightgbm; print('torch', torch.__version__, 'transformers', transformers.__version__)"
T0=$(date +%s)
python3 stages/profile_latency.py --set device=$DEVICE ${PROFILE_SET:-} --out "$W/profile" --metrics "$OUT/profile.json" \
  --cache "$W/cache_profile" 2> >(quiet)
T1=$(date +%s)
python3 stages/fit_estimator.py --profile "$W/profile/summary.parquet" --out "$W/estimator" \
  --metrics "$OUT/estimator.json" --plots "$W/plots_est" 2> >(quiet)
python3 stages/train_controller.py --estimator "$W/estimator" --out "$W/controller" --metrics "$OUT/train.json" \
  --plots "$W/plots_train" 2> >(quiet)
T2=$(date +%s)
python3 stages/validate.py --set device=$DEVICE ${VALIDATE_SET:-} --controller "$W/controller" --estimator "$W/estimator" \
  --out "$W/validate" --metrics "$OUT/validate.json" --plots "$W/plots_val" --cache "$W/cache_val" 2> >(quiet)
cp "$W/validate/requests.parquet" "$OUT/" 2>/dev/null
T3=$(date +%s)
python3 benchmarks/controller_speed.py --device $DEVICE ${SPEED_ARGS:---steps 400 --cells 300 --repeats 3} > "$OUT/speed.txt" 2> >(quiet)
T4=$(date +%s)
echo "gpu_validate: profile $((T1 - T0)) s, estimator + controller $((T2 - T1)) s, validate $((T3 - T2)) s, speed $((T4 - T3)) s"
