"""The probe's logistic regressions through scikit-learn against the torch fit, on the committed tables.

The probe (src/knobctl/controller/probe.py) fits one L2 logistic regression per configuration as one
batched L-BFGS problem in torch. This fits the same model per configuration with scikit-learn's
``LogisticRegression(C=1 / probe_l2)`` on the same standardised features (the probe's own
normalisers, so only the solver differs: both minimise the summed log-loss plus l2 / 2 * |w|^2 with an
unpenalised intercept), and prints, per split seed:

* the largest |P(right) difference| over the held-out samples (and over the training samples, whose
  predictions train_controller's reward reads with ``probe_reward``);
* the share of held-out (sample, budget) choices the probe makes alike (``probe_choices`` at
  train_controller's evaluation budgets, larger configurations winning ties as there);
* the held-out headroom: the tradeoff stage's per-budget probe gain over the best static configuration
  (points) and its headline mean where a choice exists, from each fit;
* each fit's penalised objective and its distance to the optimum (the largest |P(right) difference| to a
  scikit-learn fit at ``--reference-tol``), and its time on one thread (torch and BLAS), the median of
  ``--repeats`` fits.

Tables as the tradeoff and train_controller stages build them (data/rollouts, models/latency_estimator;
the probe reads no latency spread), split as they split them (params.yaml's seed, eval_fraction and
probe_l2 of train_controller; tradeoff's are the same values).

    python benchmarks/probe_sklearn.py [--root .] [--seeds 0 1 2] [--repeats 3] [--tol 1e-6] [--max-iter 1000]
        [--reference-tol 1e-8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from knobctl.controller import tradeoff
from knobctl.controller.probe import L2, Probe, probe_choices
from knobctl.controller.tables import CacheTables, budgets_between, build_tables
from knobctl.controller.training import TrainParams, split_samples
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import load_params, section, seed_of
from knobctl.table.accuracy_table import AccuracyTable


def fit_probe_sklearn(tables: CacheTables, train_idx: torch.Tensor, l2: float = L2, tol: float = 1e-6,
                      max_iter: int = 1000) -> Probe:
    """The same probe fitted one configuration at a time by scikit-learn's ``LogisticRegression(C=1 / l2)``
    (L-BFGS, unpenalised intercept: the objective :meth:`Probe.fit` minimises, scaled by 1 / l2) on the features
    standardised with :meth:`Probe.unfitted`'s normalisers, in float64; a :class:`Probe` like the torch fit's."""
    probe, y = Probe.unfitted(tables, train_idx)
    lang = ((tables.language[train_idx].float() - probe.language_mean) / probe.language_std).double().numpy()  # [N, D]
    vis = ((tables.vision[train_idx].float() - probe.vision_mean) / probe.vision_std).double().numpy()  # [N, T, D]
    labels = y.numpy()
    w_language, w_vision, bias = probe.w_language.clone(), probe.w_vision.clone(), probe.bias.clone()
    dim_l = lang.shape[1]
    for c, tier in enumerate(probe.tier_of.tolist()):
        if probe.constant[c]:  # one label only: nothing to fit, and predict() returns that label
            continue
        x = np.concatenate([lang, vis[:, tier]], 1)  # [N, D + D]
        model = LogisticRegression(C=1 / l2, tol=tol, max_iter=max_iter).fit(x, labels[:, c])
        coef = torch.from_numpy(model.coef_[0]).float()
        w_language[c], w_vision[c], bias[c] = coef[:dim_l], coef[dim_l:], float(model.intercept_[0])
    return Probe(**{**probe.__dict__, "w_language": w_language, "w_vision": w_vision, "bias": bias})


def objective(probe: Probe, tables: CacheTables, train_idx: torch.Tensor, l2: float) -> torch.Tensor:
    """Each configuration's penalised training objective in float64 ([C]): summed log-loss + l2 / 2 * |w|^2."""
    double = Probe(**{k: v.double() if v.is_floating_point() else v for k, v in probe.__dict__.items()})
    y = (torch.nan_to_num(tables.scores[train_idx], nan=0.0) > 0.5).double()  # [N, C]
    logits = double.logits(tables.language[train_idx].double(), tables.vision[train_idx].double())  # [N, C]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(0)  # [C]
    return loss + 0.5 * l2 * ((double.w_language ** 2).sum(1) + (double.w_vision ** 2).sum(1))


def timed(fits: dict[str, Callable[[], Probe]], repeats: int) -> tuple[dict[str, Probe], dict[str, float]]:
    """Each fit's last result and median seconds over ``repeats`` rounds, the fits taking turns within a round so
    that load from other processes falls on both alike."""
    probes, seconds = {}, {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            start = time.perf_counter()
            probes[name] = fit()
            seconds[name].append(time.perf_counter() - start)
    return probes, {name: statistics.median(s) for name, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".")
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="split seeds (default: params.yaml's seed)")
    ap.add_argument("--repeats", type=int, default=3, help="fits timed per solver (median)")
    ap.add_argument("--tol", type=float, default=1e-6, help="scikit-learn's tol (its default is 1e-4)")
    ap.add_argument("--max-iter", type=int, default=1000, help="scikit-learn's max_iter (its default is 100)")
    ap.add_argument("--reference-tol", type=float, default=1e-8, help="tol of the fit taken as the optimum")
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    p = TrainParams.from_params(section(params, "train_controller", "params.yaml"))
    grid = KnobGrid.from_params(section(params, "knobs", "params.yaml"))
    tables = build_tables(AccuracyTable.load(root / "data/rollouts"),
                          LatencyEstimator.load(root / "models/latency_estimator"), grid.configs())
    torch.set_num_threads(1)
    print(f"{len(tables.sample_ids)} samples x {len(tables.configs)} configurations, features "
          f"{tables.language.shape[1]} + {tables.vision.shape[2]}; probe_l2 {p.probe_l2} (C = {1 / p.probe_l2:g}); "
          f"scikit-learn tol {args.tol:g}, max_iter {args.max_iter}; 1 thread")
    for seed in args.seeds or [seed_of(params, "params.yaml")]:
        train_idx, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed)
        with threadpool_limits(1):
            probes, seconds = timed({"torch": partial(Probe.fit, tables, train_idx, p.probe_l2),
                                     "sklearn": partial(fit_probe_sklearn, tables, train_idx, p.probe_l2, args.tol,
                                                        args.max_iter)}, args.repeats)
            optimum = fit_probe_sklearn(tables, train_idx, p.probe_l2, args.reference_tol, 100 * args.max_iter)
        ours, theirs = probes["torch"], probes["sklearn"]
        prob = {name: probe.predict(tables.language, tables.vision) for name, probe in probes.items()}  # [S, C] each
        best = optimum.predict(tables.language, tables.vision)[eval_idx]  # [E, C]
        diff = (prob["torch"] - prob["sklearn"]).abs()  # [S, C]
        budgets = budgets_between(tables.latency_ms[train_idx], p.eval_budgets)
        lat = tables.latency_ms[eval_idx]  # [E, C]
        same = [(probe_choices(prob["torch"][eval_idx], lat, b, tables.complexity)
                 == probe_choices(prob["sklearn"][eval_idx], lat, b, tables.complexity)).float().mean() for b in budgets]
        rooms = {}
        for name, predicted in prob.items():  # the tradeoff stage's headroom, its probe fit replaced by these
            with mock.patch.object(tradeoff, "fit_probe", lambda *_, P=predicted: P):
                rooms[name] = tradeoff.headroom(tables, train_idx, eval_idx, budgets, p.probe_l2)
        obj = {"torch": objective(ours, tables, train_idx, p.probe_l2),
               "sklearn": objective(theirs, tables, train_idx, p.probe_l2)}
        fitted = ~ours.constant
        gap = (obj["torch"] - obj["sklearn"])[fitted]  # > 0: scikit-learn found the lower objective
        print(f"\nseed {seed}: {len(train_idx)} training / {len(eval_idx)} held-out samples, "
              f"{int(fitted.sum())} configurations fitted ({int(ours.constant.sum())} with constant labels)")
        print(f"  max |P(right) torch - sklearn|: held-out {diff[eval_idx].max():.2e} (mean {diff[eval_idx].mean():.1e}),"
              f" training {diff[train_idx].max():.2e}")
        print(f"  probe choices alike (held-out, {len(budgets)} budgets): {100 * float(torch.stack(same).mean()):.3f}% "
              f"(per budget: {' '.join(f'{100 * float(s):.2f}' for s in same)})")
        for name, room in rooms.items():
            gains = " ".join("-" if r["probe_gain"] is None else f"{r['probe_gain']:+.2f}" for r in room)
            print(f"  held-out headroom {name:>7}: per budget {gains}; where a choice exists "
                  f"{tradeoff.probe_headroom(room)} points")
        print(f"  objective torch - sklearn (summed over configurations): {float(gap.sum()):+.3e}; sklearn lower in "
              f"{int((gap > 0).sum())} of {len(gap)}, largest gap per configuration {float(gap.abs().max()):.2e}")
        print(f"  max |P(right) - optimum| held-out (scikit-learn at tol {args.reference_tol:g}): " + ", ".join(
            f"{name} {(prob[name][eval_idx] - best).abs().max():.2e}" for name in prob))
        print(f"  fit seconds (median of {args.repeats}): torch {seconds['torch']:.2f}, sklearn {seconds['sklearn']:.2f} "
              f"({seconds['sklearn'] / seconds['torch']:.2f}x)")


if __name__ == "__main__":
    main()
