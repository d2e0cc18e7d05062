"""Stage fit_estimator: LightGBM latency models per part, scored on held-out configurations and lengths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default="data/profile/summary.parquet")
    ap.add_argument("--out", default="models/latency_estimator")
    ap.add_argument("--metrics", default="metrics/estimator.json")
    ap.add_argument("--plots", default="plots/estimator")
    args = ap.parse_args(argv)
    from knobctl.contracts import PROFILE_SUMMARY, read_table
    from knobctl.params import InputError, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.io import output_set, read_provenance, write_csv, write_json, write_parquet
    from knobctl.latency.estimator import EstimatorParams, LatencyEstimator
    from knobctl.latency.estimator_eval import estimator_headline, evaluate
    from knobctl.latency.request import PARTS

    seed = seed_of(params, args.params)
    p = EstimatorParams.from_params(section(params, "fit_estimator", args.params))
    summary = read_table(args.profile, PROFILE_SUMMARY)
    meta = read_provenance(args.profile)
    if "tiers" not in meta:
        raise InputError(f"{args.profile} has no tier table in its metadata; rerun `dvc repro profile_latency`")

    metrics, points = evaluate(summary, meta["tiers"], p, seed)
    final = LatencyEstimator.fit(summary[summary["repeats"] > 0], meta["tiers"], p, seed,
                                 meta={k: meta.get(k) for k in ("device", "dtype", "model", "model_hash", "git_commit")})
    metrics["profile"] = {k: meta.get(k) for k in ("device", "dtype", "model", "batch_size")}
    with output_set() as outs:  # the estimator, its metrics and plots: all of them or none
        folder = outs.dir(Path(args.out))
        final.write(folder)
        write_json(folder / "evaluation.json", metrics)  # every split and part; the metrics: a headline
        write_parquet(folder / "holdout_points.parquet", points)
        write_json(outs.file(args.metrics), {"headline": estimator_headline(metrics)})
        # One CSV per part for `dvc plots` (held-out configurations); every split's points beside the model.
        plots = outs.dir(Path(args.plots))
        for part in (*PARTS, "total_ms"):
            sel = points[(points["split"] == "configs") & (points["part"] == part)]
            write_csv(plots / f"{part}.csv", sel[["config", "text_tokens", "output_tokens", "measured_ms",
                                                  "predicted_ms"]])
    cfg = metrics["configs"]
    print(f"fit_estimator: held-out configurations: total within 10% {cfg['total_ms']['within_10pct']:.1%}, "
          f"MAPE vision {cfg['vision_ms']['mape']:.1%} prefill {cfg['prefill_ms']['mape']:.1%} "
          f"decode {cfg['decode_ms_per_token']['mape']:.1%} total {cfg['total_ms']['mape']:.1%}")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
