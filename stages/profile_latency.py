"""Stage profile_latency: vision / prefill / per-token decode latency over the knob grid.

Runs on its own too (no dvc needed), e.g. on a GPU machine:
    python stages/profile_latency.py --set source=molmoe-1b-shape dtype=bfloat16
    python stages/profile_latency.py --set source=qwen3-vl-30b-a3b-shape dtype=bfloat16
source: a checkpoint folder (knobctl's own format, a Qwen3-VL-MoE or GLM-4.5V folder as downloaded from
the hub, or a folder train_base recorded for model.source) or a preset: tiny, molmoe-1b-shape,
qwen3-vl-30b-a3b-shape (true sizes, random weights). An HF family's tiers are params' model.tier_tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override profile_latency keys (YAML values), e.g. rounds=3 dtype=bfloat16")
    ap.add_argument("--out", default="data/profile")
    ap.add_argument("--metrics", default="metrics/profile.json")
    ap.add_argument("--cache", default=".knobctl_cache/profile")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.cluster import EXECUTOR_KEYS
    from knobctl.io import checkpoint_hash, params_hash, provenance, write_json_atomic, write_parquet_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.latency.profile_run import LocalProfiler
    from knobctl.latency.profiling import ROW_COLUMNS, ProfileParams, load_profiled_runtime
    from knobctl.latency.stats import median_cv, round_speed, summarize, with_speed
    from knobctl.model.presets import ModelParams
    from knobctl.parts import PartStore

    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    own = apply_overrides(section(params, "profile_latency", args.params), args.set, "profile_latency")
    p = ProfileParams.from_params(own)
    # model.tier_tokens only: a standalone profile of a preset may come with no model section at all
    tier_tokens = ModelParams.from_params(params.get("model") or {}).tier_tokens
    if p.executor == "ray":
        from knobctl.latency.ray_profiler import RayProfiler

        executor = RayProfiler(p, grid, tier_tokens, seed)
    else:
        executor = LocalProfiler(load_profiled_runtime(p, tier_tokens), grid, p, seed)
    with executor:
        info = executor.describe()
        model_hash = checkpoint_hash(p.source)
        # Where the rounds run stays out of the key, so a run stopped under one executor resumes under the
        # other; the rows' device names must still agree (ProfilePlan.resume and .finish).
        run_key = params_hash({"profile": {k: v for k, v in p.__dict__.items() if k not in EXECUTOR_KEYS},
                               "knobs": [k.label for k in grid.configs()], "seed": seed, "model": model_hash,
                               "tiers": info["tiers"], "columns": ROW_COLUMNS})
        store = PartStore(Path(args.cache) / run_key, flush_every=p.flush_every, columns=ROW_COLUMNS)
        start = time.perf_counter()
        rows = with_speed(executor.run(store))
    summary = summarize(rows)
    wall = time.perf_counter() - start

    meta = provenance(own, device=info["device"], device_type=info["device_type"], dtype=p.dtype,
                      model=p.source, model_hash=model_hash, batch_size=p.batch_size, seed=seed,
                      experts_implementation=info["experts_implementation"], num_threads=info["num_threads"],
                      tiers=info["tiers"], rounds=p.rounds, warmup_rounds=p.warmup_rounds, executor=p.executor,
                      workers=info["workers"])
    out = Path(args.out)
    write_parquet_atomic(out / "latency.parquet", rows, meta)
    write_parquet_atomic(out / "summary.parquet", summary, meta)
    cv, adj = median_cv(summary), median_cv(summary, "adj_cv")
    errors = int(rows["error"].notna().sum())
    stats = {"median_cv": cv, "median_robust_cv": median_cv(summary, "rcv"), "median_cv_drift_corrected": adj,
             "round_speed": round_speed(rows), "total_ms_median_range": [float(summary["total_ms_median"].min()),
                                                                          float(summary["total_ms_median"].max())]}
    write_json_atomic(out / "stats.json", stats)  # every part's repeatability; the metrics keep the headline
    write_json_atomic(args.metrics, {
        "headline": {"median_cv_total": round(cv["total_ms"], 4), "median_cv_drift_corrected_total":
                     round(adj["total_ms"], 4), "errors": errors, "wall_s": round(wall, 1)},
        "device": meta["device"], "dtype": p.dtype, "rows": len(rows), "configurations": len(grid.configs()),
        "rounds": p.rounds, "workers": len(info["workers"]),
    })
    store.clear()
    on = meta["device"] + (f" x {len(info['workers'])} Ray workers" if p.executor == "ray" else "")
    print(f"profile_latency: {len(rows)} rows ({errors} errors) on {on} in {wall:.0f} s; "
          f"median CV vision {cv['vision_ms']:.1%}, prefill {cv['prefill_ms']:.1%}, "
          f"decode {cv['decode_ms_per_token']:.1%}; drift-corrected total {adj['total_ms']:.1%}")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
