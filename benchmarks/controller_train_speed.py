"""Cached rollouts per second of one full controller training run, and its held-out quality beside it.

Trains the controller as train_controller runs it (params.yaml's ``train_controller`` and ``reward``
sections, the default tables: data/rollouts, models/latency_estimator, data/profile's spread) ``--runs``
times with the same seed, and prints the median training seconds and rollouts per second
(steps x batch_size x group_size / seconds, the loop alone) with the held-out headline
(mean gain over the best static configuration, over all evaluation budgets and where a choice
exists), so a speed change can be checked for equal quality: with the same seed every run trains
the same controller, so the headline is the same in every run.

Unlike benchmarks/controller_speed.py (the cached step against the real model, at a short run),
this times the whole default run.

    python benchmarks/controller_train_speed.py [--root .] [--runs 3] [--seed 0] [--threads 1]
        [--set batch_size=512 --set steps=750]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from knobctl.controller.evaluation import training_metrics
from knobctl.controller.reward import RewardWeights
from knobctl.controller.spread import latency_spread
from knobctl.controller.tables import CacheTables, build_tables
from knobctl.controller.training import TrainParams, train_controller
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import load_params, section, seed_of
from knobctl.table.accuracy_table import AccuracyTable


def overridden(train: dict[str, Any], items: list[str]) -> TrainParams:
    """params.yaml's train_controller section with ``key=value`` items (YAML values) set, validated as the stage
    validates it."""
    for item in items:
        key, value = item.split("=", 1)
        train = {**train, key: yaml.safe_load(value)}
    return TrainParams.from_params(train)


def load_tables(root: Path, grid: KnobGrid) -> CacheTables:
    """The tables as benchmarks/reward_sweep.py builds them; built fresh per run, since online fills write into them."""
    spread = latency_spread(pd.read_parquet(root / "data/profile/summary.parquet"), grid.configs())
    return build_tables(AccuracyTable.load(root / "data/rollouts"),
                        LatencyEstimator.load(root / "models/latency_estimator"), grid.configs(), spread)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=None, help="default: params.yaml's seed")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: train_controller.num_threads; 0 = every core)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train_controller key (repeatable, or comma-separated)")
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    seed = seed_of(params, "params.yaml") if args.seed is None else args.seed
    grid = KnobGrid.from_params(section(params, "knobs", "params.yaml"))
    weights = RewardWeights.from_params(section(params, "reward", "params.yaml"))
    p = overridden(section(params, "train_controller", "params.yaml"),
                   [item for s in args.set for item in filter(None, s.split(","))])
    threads = p.num_threads if args.threads is None else args.threads
    torch.set_num_threads(threads or torch.get_num_threads())
    print(f"steps {p.steps}, batch {p.batch_size} x group {p.group_size}, loss {p.loss}, "
          f"latency_sampling {p.latency_sampling}, seed {seed}, {torch.get_num_threads()} torch thread(s)")
    seconds, rates = [], []
    for run in range(args.runs):
        result = train_controller(load_tables(root, grid), p, weights, seed, progress=False)
        headline = training_metrics(result.summary, result.evaluation)["headline"]
        seconds.append(result.summary["train_seconds"])
        rates.append(result.summary["rollouts_per_s"])
        print(f"run {run}: {seconds[-1]:.2f} s, {rates[-1]:,.0f} rollouts/s; held-out mean_gain_over_static "
              f"{headline['mean_gain_over_static']}, mean_gain_where_choice {headline['mean_gain_where_choice']}, "
              f"final loss {result.summary['final']['loss']}", flush=True)
    print(f"median of {args.runs}: {statistics.median(seconds):.2f} s, {statistics.median(rates):,.0f} rollouts/s")


if __name__ == "__main__":
    main()
