"""Stage train_controller: the two-stage controller trained with a group-relative loss (GRPO by default,
or the pairwise ranking loss) against the cached rollouts and the latency estimator."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override train_controller keys")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--profile", default="data/profile", help="latency profile: each configuration's spread")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/controller")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--plots", default="plots/train")
    args = ap.parse_args(argv)
    from knobctl.contracts import PROFILE_SUMMARY, VQA_SPLIT, read_table
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.controller.evaluation import evaluation_frame, public_rows, training_metrics
    from knobctl.controller.losses import RewardWeights
    from knobctl.controller.policy import TRAINED_WITH
    from knobctl.controller.spread import latency_spread
    from knobctl.controller.tables import build_tables
    from knobctl.controller.training import TrainParams, train_controller
    from knobctl.execution import use_threads
    from knobctl.io import output_set, read_provenance, write_csv, write_json, write_parquet
    from knobctl.knobs import KnobGrid
    from knobctl.latency.estimator import LatencyEstimator
    from knobctl.table.accuracy_table import AccuracyTable

    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    weights = RewardWeights.from_params(section(params, "reward", args.params))
    p = TrainParams.from_params(apply_overrides(section(params, "train_controller", args.params), args.set,
                                                "train_controller"))
    use_threads(p.num_threads)
    table = AccuracyTable.load(args.rollouts)
    table.check_grid(grid, args.rollouts)
    absent = [k.label for k in grid.configs() if k not in set(table.configs)]
    if absent:  # allowed (a table of some configurations), but slow: say so before training starts
        print(f"train_controller: {len(absent)} configurations of the knobs grid are not in {args.rollouts} (first: "
              f"{absent[0]}); the cells the policy samples there are answered online by the real model", file=sys.stderr)
    spread = latency_spread(read_table(Path(args.profile) / "summary.parquet", PROFILE_SUMMARY), grid.configs())
    tables = build_tables(table, LatencyEstimator.load(args.estimator), grid.configs(), spread)
    meta = read_provenance(Path(args.rollouts) / "rollouts.parquet")

    def oracle():  # loaded only if a cell must come from the real model
        from knobctl.model.runtime import load_runtime
        from knobctl.table.online import OnlineOracle

        split = read_table(Path(args.data) / f"{meta['split']}.parquet", VQA_SPLIT).set_index("sample_id")
        # The table's own block order (a file path in params may have changed since).
        rt = load_runtime(meta["model"], block_order=meta.get("block_order"), tier_tokens=meta.get("tier_tokens"))
        return OnlineOracle(rt, split.loc[tables.sample_ids].reset_index(), tables.configs)

    result = train_controller(tables, p, weights, seed, fetch_factory=oracle)
    metrics = training_metrics(result.summary, result.evaluation)
    with output_set() as outs:  # the controller, its metrics and plots: all of them or none
        folder = outs.dir(args.out)
        result.controller.save(folder)
        result.probe.save(folder)
        # What trained it, beside the weights: validate names these in its provenance.
        write_json(folder / TRAINED_WITH, {"reward": asdict(weights), "seed": seed, "train_controller": asdict(p)})
        write_parquet(folder / "refresh_log.parquet", result.refresh_log)
        write_json(outs.file(args.metrics), metrics)
        write_json(outs.file(Path(args.plots) / "training.json"), {
            **result.summary, "reward": weights.__dict__, "evaluation": public_rows(result.evaluation)})
        write_csv(outs.file(Path(args.plots) / "curves.csv"), result.curves)
        write_csv(outs.file(Path(args.plots) / "budgets.csv"), evaluation_frame(result.evaluation))
    s, h = result.summary, metrics["headline"]
    print(f"train_controller: {p.steps} steps in {s['train_seconds']:.0f} s ({s['rollouts_per_s']:,} cached rollouts/s); "
          f"final reward {s['final']['reward']:.3f}, accuracy {s['final']['accuracy']:.3f}, violations "
          f"{s['final']['violation_rate']:.1%}; >= best static at {h['budgets_at_least_static']} of "
          f"{h['budgets_with_static']} budgets (> at {h['budgets_above_static']}), mean gain "
          f"{h['mean_gain_over_static']:+.4f}; where a choice exists: gain {_signed(h['mean_gain_where_choice'])}, "
          f"probe - controller {_signed(h['probe_minus_controller_where_choice'])}; slow-request rate "
          f"{h['mean_slow_rate']:.1%}")


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
