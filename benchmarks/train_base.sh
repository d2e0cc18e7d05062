#!/usr/bin/env bash
# Wall-clock of `dvc repro train_base` on the params in params.yaml (prepare_data runs first if stale,
# outside the timing). Usage: benchmarks/train_base.sh [runs]   (default 1; the stage takes ~10+ min)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
dvc repro prepare_data >/dev/null
for i in $(seq "$runs"); do
  rm -rf .knobctl_cache/train_base
  start=$(date +%s.%N)
  dvc repro -f -s train_base >/tmp/knobctl_train_base_$i.log 2>&1
  end=$(date +%s.%N)
  printf 'run %d: dvc repro train_base %.1f s\n' "$i" "$(echo "$end - $start" | bc)"
done
python - <<'PY'
import json
m = json.load(open("metrics/base.json"))
print(f"val accuracy full {m['full_accuracy']}, smallest {m['smallest_accuracy']}, corners {m['corner_range']}, stage {m['stage_seconds']} s")
PY
