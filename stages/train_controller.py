"""Stage train_controller: the two-stage controller trained with group-relative ranking on the cache."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from knobctl.accuracy_table import AccuracyTable
from knobctl.controller_training import TrainParams, build_tables, train_controller
from knobctl.estimator import LatencyEstimator
from knobctl.grpo import RewardWeights
from knobctl.io import read_provenance, write_csv_atomic, write_json_atomic, write_parquet_atomic
from knobctl.knobs import KnobGrid
from knobctl.params import apply_overrides, load_params, section, seed_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override train_controller keys")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/controller")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--plots", default="plots/train")
    args = ap.parse_args()
    params = load_params(args.params)
    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    weights = RewardWeights.from_params(section(params, "reward", args.params))
    p = TrainParams.from_params(apply_overrides(section(params, "train_controller", args.params), args.set,
                                                "train_controller"))
    tables = build_tables(AccuracyTable.load(args.rollouts), LatencyEstimator.load(args.estimator), grid.configs())
    meta = read_provenance(Path(args.rollouts) / "rollouts.parquet")

    def oracle():  # loaded only if a cell must come from the real model
        from knobctl.online import OnlineOracle
        from knobctl.runtime import load_runtime

        split = pd.read_parquet(Path(args.data) / f"{meta['split']}.parquet").set_index("sample_id")
        return OnlineOracle(load_runtime(meta["model"]), split.loc[tables.sample_ids].reset_index(), tables.configs)

    result = train_controller(tables, p, weights, seed, fetch_factory=oracle)
    result.controller.save(args.out)
    write_parquet_atomic(Path(args.out) / "refresh_log.parquet", result.refresh_log)
    evaluation = result.evaluation
    gains = [e["gain_over_static"] for e in evaluation if e["gain_over_static"] is not None]
    write_json_atomic(args.metrics, {**result.summary, "reward": weights.__dict__,
                                     "eval_mean_gain_over_static": round(sum(gains) / max(len(gains), 1), 4),
                                     "eval_budgets_at_least_static": sum(g >= 0 for g in gains),
                                     "eval_budgets_above_static": sum(g > 0 for g in gains),
                                     "eval_budgets_with_static": len(gains),
                                     "eval_budgets_significantly_above_static": sum(
                                         e["gain_ci95_low"] is not None and e["gain_ci95_low"] > 0 for e in evaluation),
                                     "eval_budgets_significantly_below_static": sum(
                                         e["gain_ci95_high"] is not None and e["gain_ci95_high"] < 0 for e in evaluation),
                                     "eval": {f"{e['budget_ms']:.2f}ms": e for e in evaluation}})
    write_csv_atomic(Path(args.plots) / "curves.csv", result.curves)
    flat = [{k: v for k, v in e.items() if not isinstance(v, dict)} for e in evaluation]
    write_csv_atomic(Path(args.plots) / "budgets.csv", pd.DataFrame(flat))
    s = result.summary
    print(f"train_controller: {p.steps} steps in {s['train_seconds']:.0f} s ({s['rollouts_per_s']:,} cached rollouts/s); "
          f"final reward {s['final']['reward']:.3f}, accuracy {s['final']['accuracy']:.3f}, violations "
          f"{s['final']['violation_rate']:.1%}; >= best static at {sum(g >= 0 for g in gains)} of {len(gains)} "
          f"budgets (> at {sum(g > 0 for g in gains)}), mean gain {sum(gains) / max(len(gains), 1):+.4f}")


if __name__ == "__main__":
    main()
