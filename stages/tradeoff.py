"""Stage tradeoff: what the model's knobs trade, from the cached tables -> metrics/tradeoff.json, plots/tradeoff/.

Accuracy and estimated latency per knob setting, full against smallest, the static Pareto front,
the oracle's and the supervised probe's headroom over the best static configuration per budget,
and the block-importance curve beside MolmoE-1B's (src/knobctl/controller/tradeoff.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--importance", default="data/block_importance/importance.json")
    ap.add_argument("--metrics", default="metrics/tradeoff.json")
    ap.add_argument("--plots", default="plots/tradeoff")
    args = ap.parse_args(argv)
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    seed = seed_of(params, args.params)
    import pandas as pd

    from knobctl.controller.tables import build_tables
    from knobctl.controller.tradeoff import TradeoffParams, headline, tradeoff
    from knobctl.controller.training import split_samples
    from knobctl.execution import use_threads
    from knobctl.io import atomic_dir, write_json_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.latency.estimator import LatencyEstimator
    from knobctl.table.accuracy_table import AccuracyTable

    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    p = TradeoffParams.from_params(section(params, "tradeoff", args.params))
    use_threads(p.num_threads)
    table = AccuracyTable.load(args.rollouts)
    table.check_grid(grid, args.rollouts)
    tables = build_tables(table, LatencyEstimator.load(args.estimator), grid.configs())
    train_idx, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed)
    importance = Path(args.importance)
    t = tradeoff(tables, train_idx, eval_idx, p.num_budgets,
                 json.loads(importance.read_text()) if importance.exists() else None, p.probe_l2)
    with atomic_dir(args.plots) as tmp:
        (tmp / "tradeoff.json").write_text(json.dumps(t, indent=2) + "\n")
        for knob, rows in t["knobs"].items():
            pd.DataFrame(rows).to_csv(tmp / f"knob_{knob}.csv", index=False)
        pd.DataFrame(t["pareto_front"]).to_csv(tmp / "pareto.csv", index=False)
        pd.DataFrame(t["headroom"]).to_csv(tmp / "headroom.csv", index=False)
    ends, h = t["full_vs_smallest"], headline(t)
    write_json_atomic(args.metrics, {"headline": h, "full_vs_smallest": ends})
    print(f"tradeoff: full {ends['full']} {ends['full_accuracy']:.1f} pts / {ends['full_latency_ms']:.1f} ms, "
          f"smallest {ends['smallest']} {ends['smallest_accuracy']:.1f} / {ends['smallest_latency_ms']:.1f} ms "
          f"({ends['full_over_smallest_latency']:.2f}x); goals met {h['goals_met']} of {h['goals_measured']}")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
