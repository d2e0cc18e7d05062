"""Held-out gain over the best static configuration of train_controller variants, over seeded splits.

Each variant is a set of `train_controller` overrides (and optionally `reward` overrides, or
`"probe": true` to replace the training samples' 0/1 scores by a per-configuration logistic
probe's predicted accuracy, as in controller_ceiling.py). For each of --splits seeded
train/evaluation splits it trains the controller (about 30 s) and prints, per evaluation budget
with a static configuration, the mean gain in points, the overall mean, and the shares of
(split, budget) cells at or above static and above it, after each split's own gains.

    python benchmarks/controller_variants.py '{"base": {}, "wd": {"weight_decay": 0.1, "dropout": 0.3}}' --splits 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings

import numpy as np
import torch
from controller_ceiling import load_defaults, probe_scores

from knobctl.controller.tables import build_tables
from knobctl.controller.training import split_samples, train_controller


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", help="JSON object: name -> train_controller overrides")
    ap.add_argument("--splits", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    grid, table, est, base, weights = load_defaults()
    for name, overrides in json.loads(args.variants).items():
        overrides = dict(overrides)
        probe, reward_overrides = overrides.pop("probe", False), overrides.pop("reward", {})
        p, w = dataclasses.replace(base, **overrides), dataclasses.replace(weights, **reward_overrides)
        gains, start = [], time.perf_counter()
        for split in range(args.splits):
            t = build_tables(table, est, grid.configs())
            tr, _ = split_samples(len(t.sample_ids), p.eval_fraction, split)
            if probe:  # the training samples' scores become the probe's in-sample predictions
                everyone = np.arange(len(t.sample_ids))
                t.scores[tr] = torch.from_numpy(probe_scores(t, tr.numpy(), everyone, 0.01)[tr.numpy()]).float()
            rows = train_controller(t, p, w, split, progress=False).evaluation
            gains.append([r["gain_over_static"] for r in rows if r["gain_over_static"] is not None])
        g = np.array(gains) * 100  # [splits, budgets] points
        for split, row in enumerate(g):
            print(f"{name:>20}  split {split}: " + " ".join(f"{x:+.2f}" for x in row), flush=True)
        print(f"{name:>20}: " + " ".join(f"{x:+.2f}" for x in g.mean(0)) + f"  mean {g.mean():+.3f}  "
              f"at or above static {(g >= 0).mean():.0%}, above {(g > 0).mean():.0%}  "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
