#!/usr/bin/env bash
# Wall clock of `dvc repro -f -s accuracy_table` on default params, RUNS times, and a check that
# every run writes the same table (the data/rollouts hash in dvc.lock) and the same metrics.
#   bash benchmarks/accuracy_table.sh [RUNS]        (default 3; needs models/base and data/vqa)
set -euo pipefail
RUNS=${1:-3}
hashes=()
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  dvc repro -f -s accuracy_table 2>/dev/null | grep -a "^accuracy_table:" || true
  end=$(date +%s.%N)
  h=$(python -c "import yaml; l=yaml.safe_load(open('dvc.lock')); print([o['md5'] for o in l['stages']['accuracy_table']['outs']][0])")
  m=$(md5sum metrics/accuracy_table.json | cut -c1-12)
  hashes+=("$h/$m")
  printf 'run %d: %.1f s, data/rollouts %s, metrics %s\n' "$i" "$(echo "$end - $start" | bc)" "$h" "$m"
done
if [ "$(printf '%s\n' "${hashes[@]}" | sort -u | wc -l)" -eq 1 ]; then echo "identical outputs in all $RUNS runs"; else echo "OUTPUTS DIFFER"; fi
