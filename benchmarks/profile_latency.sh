#!/usr/bin/env bash
# Latency profile -> estimator -> end-to-end rt.answer check, RUNS times on default params.
# The e2e check runs right after its own profile, so machine drift between them stays small.
#   bash benchmarks/profile_latency.sh [RUNS] [OUTDIR]      (default 3 runs, /tmp/knobctl_bench)
# Needs models/base (dvc repro train_base). Prints one line per run and the medians.
set -euo pipefail
RUNS=${1:-3}
OUT=${2:-/tmp/knobctl_bench}
for i in $(seq 1 "$RUNS"); do
  d="$OUT/run$i"
  rm -rf "$d"
  start=$(date +%s.%N)
  python stages/profile_latency.py --out "$d/profile" --metrics "$d/profile.json" --cache "$d/cache" 2>/dev/null
  end=$(date +%s.%N)
  python -c "import json,sys; p='$d/profile.json'; m=json.load(open(p)); m['process_wall_s']=round($end-$start,1); json.dump(m,open(p,'w'),indent=2)"
  python stages/fit_estimator.py --profile "$d/profile/summary.parquet" --out "$d/est" --metrics "$d/estimator.json" \
    --plots "$d/plots"
  python benchmarks/e2e_latency.py --estimator "$d/est" --out "$d/e2e.json" 2>/dev/null | tail -1
done
python - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
load = lambda i, f: json.load(open(f"{out}/run{i}/{f}"))
rows = []
for i in range(1, runs + 1):
    p, e, x = load(i, "profile.json"), load(i, "estimator.json"), load(i, "e2e.json")["summary"]
    rows.append({"profile_s": p["process_wall_s"], "cv_total": p["median_cv"]["total_ms"],
                 "adj_cv_total": p["median_cv_drift_corrected"]["total_ms"],
                 "rcv_total": p["median_robust_cv"]["total_ms"], "within10_configs": e["configs"]["total_ms"]["within_10pct"],
                 "within10_lengths": e["lengths"]["total_ms"]["within_10pct"], "mape_total": e["configs"]["total_ms"]["mape"],
                 "e2e_median_abs": x["median_abs_error"], "harness_vs_answer": x["median_abs_harness_error"],
                 "drift": x["median_drift_since_profile"]})
    print(f"run {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()))
print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.3f}" for k in rows[0]))
PY
