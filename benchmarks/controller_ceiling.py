"""How much per-sample headroom over the best static configuration can any controller predict?

On the default tables (data/rollouts, models/latency_estimator), for several seeded
train/evaluation splits of the table's samples and the train_controller evaluation budgets,
the evaluation accuracy (estimated latency, as in metrics/train.json) of:

* static: the best configuration that fits 95% of the training samples (the baseline);
* length-aware: for each request, the configuration with the best training accuracy among
  those whose estimated latency *for this request's question length* fits (no features);
* probe: one L2-regularised logistic regression per configuration predicts P(right | language
  and vision features) on the training samples; each request takes the fitting configuration
  with the highest prediction. A supervised ceiling for what the features carry, not a method;
* controller (with --controller): the trained GRPO controller of this split (about 30 s each);
* oracle: each sample's best fitting configuration (an upper bound, not a method).

Prints the mean gain over static per budget across splits, and a paired bootstrap interval
of each split's gain.

    python benchmarks/controller_ceiling.py [--splits 5] [--controller]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from knobctl.controller.evaluation import evaluate
from knobctl.controller.reward import RewardWeights
from knobctl.controller.tables import CacheTables, budgets_between, build_tables
from knobctl.controller.training import TrainParams, split_samples, train_controller
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import load_params, section
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.measures import FIT_SHARE


def probe_scores(t: CacheTables, tr: np.ndarray, ev: np.ndarray, c_reg: float) -> np.ndarray:
    """Predicted P(right) per evaluation sample and configuration ([E, C])."""
    acc = np.nan_to_num(t.scores.numpy())
    out = np.zeros((len(ev), len(t.configs)))
    for j, k in enumerate(t.configs):
        x = np.concatenate([t.language.numpy(), t.vision.numpy()[:, t.tiers.index(k.tier)]], 1)  # [S, 2D]
        y = (acc[tr, j] > 0.5).astype(int)
        if y.min() == y.max():
            out[:, j] = y[0]
            continue
        scale = StandardScaler().fit(x[tr])
        model = LogisticRegression(C=c_reg, max_iter=1000).fit(scale.transform(x[tr]), y)
        out[:, j] = model.predict_proba(scale.transform(x[ev]))[:, 1]
    return out


def load_defaults() -> tuple[KnobGrid, AccuracyTable, LatencyEstimator, TrainParams, RewardWeights]:
    """The repository's grid, cached rollouts, estimator, train_controller params and reward weights."""
    params = load_params("params.yaml")
    grid = KnobGrid.from_params(section(params, "knobs", "params.yaml"))
    table, est = AccuracyTable.load("data/rollouts"), LatencyEstimator.load("models/latency_estimator")
    return (grid, table, est, TrainParams.from_params(section(params, "train_controller", "params.yaml")),
            RewardWeights.from_params(section(params, "reward", "params.yaml")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--probe-c", type=float, default=0.01, help="inverse L2 strength of the probe")
    ap.add_argument("--controller", action="store_true", help="also train the controller on each split")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    grid, table, est, p, weights = load_defaults()
    methods = ["length-aware", "probe", *(["controller"] if args.controller else []), "oracle"]
    gains: dict[str, list[list[float]]] = {m: [] for m in methods}
    for split in range(args.splits):
        t = build_tables(table, est, grid.configs())
        tr_t, ev_t = split_samples(len(t.sample_ids), p.eval_fraction, split)
        tr, ev = tr_t.numpy(), ev_t.numpy()
        acc, lat = np.nan_to_num(t.scores.numpy()), t.latency_ms.numpy()  # [S, C]
        prior = acc[tr].mean(0) + 1e-6 * t.complexity.numpy()  # [C]; ties go to the larger configuration
        probe = probe_scores(t, tr, ev, args.probe_c) + 1e-6 * t.complexity.numpy()  # [E, C]
        budgets = budgets_between(t.latency_ms[tr_t], p.eval_budgets)
        ctrl_rows = (evaluate(train_controller(t, p, weights, split, progress=False).controller, t, tr_t, ev_t, budgets)
                     if args.controller else None)
        per: dict[str, list[float]] = {m: [] for m in methods}
        for i, b in enumerate(budgets):
            fits_tr = (lat[tr] <= b).mean(0) >= FIT_SHARE
            if not fits_tr.any():
                continue
            static = acc[ev, int(np.where(fits_tr, prior, -1).argmax())].mean()
            fits = lat[ev] <= b  # [E, C]
            rows = np.arange(len(ev))
            per["length-aware"].append(acc[ev][rows, np.where(fits, prior[None], -1).argmax(1)].mean() - static)
            per["probe"].append(acc[ev][rows, np.where(fits, probe, -1).argmax(1)].mean() - static)
            per["oracle"].append(np.where(fits, acc[ev], 0).max(1).mean() - static)
            if ctrl_rows is not None:
                per["controller"].append(ctrl_rows[i]["controller_accuracy"] - static)
        for m in methods:
            gains[m].append(per[m])
        print(f"split {split}: " + "  ".join(f"{m} {np.mean(per[m]):+.4f}" for m in methods), flush=True)
        for m in methods:
            print(f"    {m:>12} per budget: " + " ".join(f"{x:+.4f}" for x in per[m]), flush=True)
    print("mean gain over static per budget (columns: budgets with a static configuration, tightest first)")
    for m in methods:
        g = np.array(gains[m])  # [splits, budgets]
        print(f"  {m:>12}: " + " ".join(f"{x:+.4f}" for x in g.mean(0)) + f"   mean {g.mean():+.4f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
