"""What latency the knobs would have to buy for a per-request choice to beat the best static one.

The tradeoff stage measures the supervised probe's and the oracle's headroom over the best static
configuration on the cached val tables, priced by the latency estimator. This re-prices the same
tables with an extra cost per tier (the high tier ``+x`` of the full configuration's latency, the
medium tier in proportion to its visual tokens, the low tier unchanged) or per expert kept, and
reports the headroom again: is the tier's (or top-k's) latency what keeps the probe at static?

    python benchmarks/headroom_whatif.py [--tier-extra 0 0.1 0.2 0.4] [--topk-extra 0 0.1 0.2]

Reads data/rollouts, models/latency_estimator and the tradeoff section of params.yaml, as the
tradeoff stage does; prints one line per variant (the mean over budgets where 20-80% of the
configurations fit, as the issue's goal).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from knobctl.controller.tables import CacheTables, budgets_between, build_tables
from knobctl.controller.tradeoff import TradeoffParams, headroom
from knobctl.controller.training import split_samples
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import load_params, section, seed_of
from knobctl.table.accuracy_table import AccuracyTable


def repriced(tables: CacheTables, extra: torch.Tensor) -> CacheTables:
    """The tables with ``extra`` ms [C] added to every request of each configuration."""
    return dataclasses.replace(tables, latency_ms=tables.latency_ms + extra[None],
                               fit_latency_ms=tables.fit_latency_ms + extra[None])


def summary(tables: CacheTables, train_idx: torch.Tensor, eval_idx: torch.Tensor, num_budgets: int,
            l2: float) -> str:
    rows = headroom(tables, train_idx, eval_idx, budgets_between(tables.latency_ms[train_idx], num_budgets), l2)
    mid = [r for r in rows if r["static_config"] is not None and 0.2 <= r["fit_share"] <= 0.8]
    if not mid:
        return "no budget where 20-80% of configurations fit"
    probe = sum(r["probe_gain"] for r in mid) / len(mid)
    oracle = sum(r["oracle_gain"] for r in mid) / len(mid)
    statics = ", ".join(r["static_config"] for r in mid)
    return f"probe {probe:+.2f} pts, oracle {oracle:+.2f} over {len(mid)} budgets (static: {statics})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--tier-extra", type=float, nargs="*", default=[0.0, 0.1, 0.2, 0.4])
    ap.add_argument("--topk-extra", type=float, nargs="*", default=[0.1, 0.2])
    args = ap.parse_args()
    params = load_params(args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    p = TradeoffParams.from_params(section(params, "tradeoff", args.params))
    tables = build_tables(AccuracyTable.load(args.rollouts), LatencyEstimator.load(args.estimator), grid.configs())
    train_idx, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed_of(params, args.params))
    full_ms = float(tables.latency_ms.median(0).values.max())
    tokens = {"low": 1.0, "medium": 4.0, "high": 16.0}  # the default's visual tokens per tier
    top_k = max(grid.top_k)
    for x in args.tier_extra:
        extra = torch.tensor([x * full_ms * (tokens[k.tier] - 1) / 15 for k in tables.configs])  # [C]
        print(f"tier +{x:.0%} of full at high: {summary(repriced(tables, extra), train_idx, eval_idx, p.num_budgets, p.probe_l2)}")
    for x in args.topk_extra:
        extra = torch.tensor([x * full_ms * (k.top_k - min(grid.top_k)) / (top_k - min(grid.top_k))
                              for k in tables.configs])  # [C]
        print(f"top_k +{x:.0%} of full at top-{top_k}: "
              f"{summary(repriced(tables, extra), train_idx, eval_idx, p.num_budgets, p.probe_l2)}")


if __name__ == "__main__":
    main()
