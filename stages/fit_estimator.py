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
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.latency.estimator import EstimatorParams
    from knobctl.latency.estimator_run import fit_from_profile, write_estimator

    run = fit_from_profile(args.profile, EstimatorParams.from_params(section(params, "fit_estimator", args.params)),
                           seed_of(params, args.params))
    write_estimator(run, args.out, args.metrics, args.plots)
    print(run.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
