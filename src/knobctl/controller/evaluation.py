"""Evaluation of a trained controller on cached tables, at fixed budgets, with estimated latency.

Per budget, on the evaluation samples: the argmax controller; the best static
configuration that fits the budget (chosen on the training samples: the most accurate
configuration whose estimated latency fits the budget for >= 95% of them, the same rule
as the validation stage's baseline); and the per-sample oracle (each sample's most
accurate configuration that fits; an upper bound, not a method).

Each gain over static comes with a paired bootstrap 95% interval over the evaluation
samples: on a few hundred samples a difference of one or two answers is within noise, and
the interval says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from knobctl.controller.policy import Controller
from knobctl.controller.tables import CacheTables
from knobctl.io import round4 as _r

FIT_SHARE = 0.95  # a static configuration "fits" a budget when this share of samples does
BOOTSTRAP = 2000  # resamples of the paired gain interval


def gain_interval(diff: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95% interval of the mean of per-sample differences ``diff`` [E]."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(diff), (BOOTSTRAP, len(diff)), generator=gen)  # [R, E]
    means = diff[pick].mean(1)  # [R]
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975]))
    return _r(lo), _r(hi)


def mean_accuracy(scores: torch.Tensor) -> torch.Tensor:
    """Per-configuration accuracy of [S, C] scores; a NaN (error) cell counts as wrong: [C]."""
    return torch.nan_to_num(scores, nan=0.0).mean(0)


def best_static(latency_ms: torch.Tensor, accuracy: torch.Tensor, budget_ms: float) -> int | None:
    """The most accurate configuration (``accuracy`` [C]) whose latency ([S, C]) fits
    ``budget_ms`` for >= FIT_SHARE of the samples, or None if none does."""
    fits = (latency_ms <= budget_ms).float().mean(0) >= FIT_SHARE  # [C]
    if not fits.any():
        return None
    return int(torch.where(fits, accuracy, torch.tensor(-1.0)).argmax())


def evaluate(ctrl: Controller, tables: CacheTables, train_idx: torch.Tensor, eval_idx: torch.Tensor,
             budgets: Sequence[float]) -> list[dict[str, Any]]:
    """Argmax controller vs best static (fits on the training samples) vs oracle, per budget, on
    the evaluation samples, with estimated latency."""
    rows = []
    acc, lat = tables.scores[eval_idx], tables.latency_ms[eval_idx]  # [E, C]
    acc_filled = torch.nan_to_num(acc, nan=0.0)
    rows_e = torch.arange(len(eval_idx))
    column = {k: j for j, k in enumerate(tables.configs)}
    train_acc = mean_accuracy(tables.scores[train_idx])  # [C], the same at every budget
    for budget in budgets:
        b = torch.full((len(eval_idx),), budget)
        chosen = ctrl.choose(tables.language[eval_idx], tables.vision[eval_idx], b, tables.text_tokens[eval_idx])
        ci = torch.tensor([column[k] for k in chosen])  # [E]
        c_acc, c_lat = acc_filled[rows_e, ci], lat[rows_e, ci]
        static = best_static(tables.latency_ms[train_idx], train_acc, budget)
        fit_cells = lat <= budget  # [E, C]
        oracle = torch.where(fit_cells, acc_filled, torch.tensor(-1.0)).max(1).values.clamp(min=0)  # [E]
        row = {
            "budget_ms": budget,
            "controller_accuracy": _r(c_acc.mean()), "controller_violation_rate": _r((c_lat > budget).float().mean()),
            "controller_mean_latency_ms": _r(c_lat.mean()),
            "static_config": tables.configs[static].label if static is not None else None,
            "static_accuracy": _r(acc_filled[:, static].mean()) if static is not None else None,
            "static_violation_rate": _r((lat[:, static] > budget).float().mean()) if static is not None else None,
            "oracle_accuracy": _r(oracle.mean()),
            "tier_share": {t: _r((ci // (len(tables.configs) // len(tables.tiers)) == i).float().mean())
                           for i, t in enumerate(tables.tiers)},
        }
        row["gain_over_static"] = _r(row["controller_accuracy"] - row["static_accuracy"]) if static is not None else None
        row["gain_ci95_low"], row["gain_ci95_high"] = (gain_interval(c_acc - acc_filled[:, static])
                                                        if static is not None else (None, None))
        rows.append(row)
    return rows


def drift(log: pd.DataFrame) -> dict[str, Any]:
    """How far refreshed cells moved: score changes and measured/cached latency ratios."""
    done = log[log["reason"] == "refresh"] if len(log) else log
    if not len(done):
        return {}
    ratio = done["fresh_latency_ms"] / done["cached_latency_ms"]
    return {"score_changed_share": _r((done["fresh_score"] != done["cached_score"]).mean()),
            "latency_ratio_median": _r(ratio.median()), "latency_abs_rel_error_median": _r((ratio - 1).abs().median())}



#: Per-budget numbers kept in metrics/train.json; the rest of each evaluation row is in plots/train/budgets.csv.
BUDGET_METRICS = ("controller_accuracy", "static_accuracy")


def budget_key(position: int) -> str:
    """A budget's stable metrics key: its position among the evaluation budgets, tightest first (b0, b1, ...).
    The budgets in ms move with every profile; positions do not, so DVC can compare runs row by row."""
    return f"b{position}"


def training_metrics(summary: dict[str, Any], evaluation: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """metrics/train.json: a headline block, the run's size and speed, the last training point's reward,
    accuracy and violations, and the controller's and the best static configuration's held-out accuracy per
    evaluation budget, keyed by position. Everything else (entropies, online fills, intervals) is in the
    stage's non-metric JSON and CSV beside the plots."""
    gains = [e["gain_over_static"] for e in evaluation if e["gain_over_static"] is not None]
    headline = {
        "mean_gain_over_static": _r(sum(gains) / max(len(gains), 1)),
        "budgets_at_least_static": sum(g >= 0 for g in gains),
        "budgets_above_static": sum(g > 0 for g in gains),
        "budgets_with_static": len(gains),
        "budgets_significantly_below_static": sum(
            e["gain_ci95_high"] is not None and e["gain_ci95_high"] < 0 for e in evaluation),
        "final_reward": summary["final"]["reward"],
        "final_violation_rate": summary["final"]["violation_rate"],
    }
    budgets = {budget_key(i): {k: e[k] for k in BUDGET_METRICS} for i, e in enumerate(evaluation)}
    final = {k: summary["final"][k] for k in ("reward", "accuracy", "violation_rate")}
    return {"headline": headline, **{k: summary[k] for k in ("steps", "train_seconds", "rollouts_per_s")},
            "final": final, "budgets": budgets}


def evaluation_frame(evaluation: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Every evaluation row flat (tier shares as ``tier_share_<tier>`` columns), for plots/train/budgets.csv."""
    flat = []
    for i, e in enumerate(evaluation):
        row = {"budget": budget_key(i)}
        for k, v in e.items():
            if isinstance(v, dict):
                row.update({f"{k}_{name}": x for name, x in v.items()})
            else:
                row[k] = v
        flat.append(row)
    return pd.DataFrame(flat)
