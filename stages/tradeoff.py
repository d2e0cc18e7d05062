"""Stage tradeoff: what the model's knobs trade, from the cached tables -> metrics/tradeoff.json, plots/tradeoff/.

Accuracy and estimated latency per knob setting, full against smallest, the static Pareto front,
the oracle's and the supervised probe's headroom over the best static configuration per budget,
and the block-importance curve beside MolmoE-1B's (src/knobctl/controller/tradeoff.py).
"""

from __future__ import annotations

import argparse
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
    from knobctl.controller.tradeoff import run_tradeoff, summary_line, write_tradeoff
    from knobctl.knobs import KnobGrid

    t = run_tradeoff(section(params, "tradeoff", args.params), KnobGrid.from_params(section(params, "knobs", args.params)),
                     seed_of(params, args.params), args.rollouts, args.estimator, args.importance)
    write_tradeoff(t, args.plots, args.metrics)
    print(summary_line(t))


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
