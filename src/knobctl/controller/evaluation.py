"""Evaluation of a trained controller on cached tables, at fixed budgets, with estimated latency.

Per budget, on the evaluation samples: the argmax controller; the supervised probe
(:mod:`knobctl.controller.probe`, fitted on the training samples); the best static
configuration for the budget, chosen on the training samples; full, smallest and random; and the
per-sample oracle (an upper bound, not a method). Static, full, smallest, the oracle and the
missing-cell convention are :mod:`knobctl.table.measures`', the same in every stage.

Each gain over static comes with a paired bootstrap 95% interval over the evaluation
samples: on a few hundred samples a difference of one or two answers is within noise, and
the interval says so. The held-out goals (:data:`knobctl.goals.TRAIN_GOALS`) are judged on
these rows (:func:`train_goal_results`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from knobctl.controller.policy import Controller
from knobctl.controller.probe import probe_choices
from knobctl.controller.spread import violation_probability
from knobctl.controller.tables import CacheTables
from knobctl.goals import TRAIN_GOALS, share, tally
from knobctl.intervals import NOT_BELOW, paired_interval
from knobctl.io import round4 as _r
from knobctl.table.measures import best_static, config_accuracy, full_index, oracle_scores, smallest_index

#: An evaluation row's per-sample accuracies of these methods ({method: [E]}), for paired intervals over budgets.
PER_SAMPLE, PAIRED = "_per_sample", ("controller", "static", "probe")


def gain_interval(diff: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95% interval of the mean of per-sample differences ``diff`` [E]
    (:func:`knobctl.intervals.paired_interval`)."""
    return paired_interval(diff.detach().cpu().numpy(), seed)


def evaluate(ctrl: Controller, tables: CacheTables, train_idx: torch.Tensor, eval_idx: torch.Tensor,
             budgets: Sequence[float], probe: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Every method per budget on the evaluation samples, with estimated latency: the argmax
    controller, the supervised probe (``probe``: its P(right) [S, C] for every table row, fitted on
    the training samples), the best static configuration (fits on the training samples), full,
    smallest, random (the expected accuracy of a uniform pick among the fitting configurations, the
    cheapest where none fits) and the per-sample oracle.

    Violation rates count estimates over the budget; ``*_slow_rate`` is the chance that the chosen
    configuration runs over once the profile's spread is applied (:mod:`knobctl.controller.spread`),
    which is where the reward's violation weight shows, and ``*_accuracy_within_budget`` the accuracy
    with each right answer weighted by its chance of arriving in time (validate's metric of that name,
    with the profile's spread in place of the clock)."""
    rows = []
    acc, lat = tables.scores[eval_idx], tables.latency_ms[eval_idx]  # [E, C]
    acc_filled = torch.nan_to_num(acc, nan=0.0)  # a missing cell is a wrong answer (knobctl.table.measures)
    rows_e = torch.arange(len(eval_idx))
    column = {k: j for j, k in enumerate(tables.configs)}
    train_acc = config_accuracy(tables.scores[train_idx])  # [C], the same at every budget
    spread = tables.latency_spread  # [C, 2]
    full, cheapest = full_index(tables.configs), smallest_index(tables.configs)
    per_tier = len(tables.configs) // len(tables.tiers)
    for budget in budgets:
        b = torch.full((len(eval_idx),), budget)
        chosen = ctrl.choose(tables.language[eval_idx], tables.vision[eval_idx], b, tables.text_tokens[eval_idx])
        picks = {"controller": torch.tensor([column[k] for k in chosen])}  # [E] each
        if probe is not None:
            picks["probe"] = probe_choices(probe[eval_idx], lat, budget, tables.complexity)
        static = best_static(train_acc, tables.latency_ms[train_idx], budget)
        if static is not None:
            picks["static"] = torch.full((len(eval_idx),), static)
        picks["full"], picks["smallest"] = torch.full_like(b, full, dtype=torch.long), torch.full_like(
            b, cheapest, dtype=torch.long)
        fit_cells = lat <= budget  # [E, C]
        oracle = oracle_scores(acc, lat, budget)  # [E]
        any_fit = fit_cells.any(1)  # [E]
        random = torch.where(any_fit, (acc_filled * fit_cells).sum(1) / fit_cells.sum(1).clamp(min=1),
                             acc_filled[:, cheapest])  # [E]: the expectation of a uniform pick
        row: dict[str, Any] = {"budget_ms": budget, "fit_share": _r(fit_cells.float().mean()),
                               "static_config": tables.configs[static].label if static is not None else None}
        for name, ci in picks.items():
            c_lat = lat[rows_e, ci]  # [E]
            row[f"{name}_accuracy"] = _r(acc_filled[rows_e, ci].mean())
            row[f"{name}_violation_rate"] = _r((c_lat > budget).float().mean())
            slow = violation_probability(c_lat, budget, spread[ci])  # [E]
            row[f"{name}_slow_rate"] = _r(slow.mean())
            # the analogue of validate's accuracy within budget: a right answer counts only when in time
            row[f"{name}_accuracy_within_budget"] = _r((acc_filled[rows_e, ci] * (1 - slow)).mean())
            if name in ("controller", "probe"):
                row[f"{name}_mean_latency_ms"] = _r(c_lat.mean())
        for name in ("probe", "static"):
            for metric in ("accuracy", "violation_rate", "slow_rate", "accuracy_within_budget"):
                row.setdefault(f"{name}_{metric}", None)
        row["random_accuracy"], row["oracle_accuracy"] = _r(random.mean()), _r(oracle.mean())
        row["tier_share"] = {t: _r((picks["controller"] // per_tier == i).float().mean())
                             for i, t in enumerate(tables.tiers)}
        c_acc = acc_filled[rows_e, picks["controller"]]  # [E]
        # per-sample accuracies, for the paired intervals of the headline; left out of every written file
        row[PER_SAMPLE] = {name: acc_filled[rows_e, ci] for name, ci in picks.items() if name in PAIRED}
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



#: The few figures of metrics/train.json, compared across experiments; every other figure of
#: :func:`training_headline` is in plots/train/training.json, every budget's in plots/train/budgets.csv.
HEADLINE = ("goals_met", "goals_measured", "mean_gain_where_choice", "mean_gain_where_choice_ci95_low",
            "mean_gain_where_choice_ci95_high", "gap_closed_where_choice", "probe_minus_controller_where_choice",
            "budgets_not_below_static", "budgets_with_static", "mean_gain_over_static", "mean_slow_rate",
            "final_reward", "rollouts_per_s")


def budget_key(position: int) -> str:
    """A budget's stable key: its position among the evaluation budgets, tightest first (b0, b1, ...).
    The budgets in ms move with every profile; positions do not, so runs compare row by row."""
    return f"b{position}"


def choice_budgets(evaluation: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows where a choice exists: some but not all configurations fit, and a static one does."""
    return [e for e in evaluation if e["static_accuracy"] is not None and 0 < e["fit_share"] < 1]


def controller_goals(evaluation: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures the controller's held-out goals (:data:`knobctl.goals.TRAIN_GOALS`) read, from :func:`evaluate`'s
    rows: budgets not significantly below static, and over the budgets where a choice exists the mean gain, the
    share of the static-to-oracle gap closed and the distance to the probe (all in accuracy, 0..1)."""
    with_static = [e for e in evaluation if e["static_accuracy"] is not None]
    mid = choice_budgets(evaluation)
    gap = sum(e["oracle_accuracy"] - e["static_accuracy"] for e in mid)
    gains = [e["controller_accuracy"] - e["static_accuracy"] for e in mid]
    probe = [e["probe_accuracy"] - e["controller_accuracy"] for e in mid if e["probe_accuracy"] is not None]
    within = [e["controller_accuracy_within_budget"] - e["static_accuracy_within_budget"] for e in mid]
    gain_ci = _mean_interval(mid, "controller", "static")
    probe_ci = _mean_interval(mid, "probe", "controller")
    return {
        "budgets_not_below_static": sum(e["gain_ci95_low"] >= NOT_BELOW for e in with_static),
        "budgets_with_choice": len(mid),
        "mean_gain_where_choice": _r(sum(gains) / len(gains)) if gains else None,
        "mean_gain_where_choice_ci95_low": gain_ci[0], "mean_gain_where_choice_ci95_high": gain_ci[1],
        # undefined where the oracle is not above static in total (float sums of equal accuracies are not exactly 0)
        "gap_closed_where_choice": _r(sum(gains) / gap) if gap > 1e-6 else None,
        "probe_minus_controller_where_choice": _r(sum(probe) / len(probe)) if probe else None,
        "probe_minus_controller_ci95_low": probe_ci[0], "probe_minus_controller_ci95_high": probe_ci[1],
        "probe_gain_where_choice": _r(sum(e["probe_accuracy"] - e["static_accuracy"] for e in mid) / len(mid))
        if mid and mid[0]["probe_accuracy"] is not None else None,
        "mean_gain_within_budget_where_choice": _r(sum(within) / len(within)) if within else None,
    }


def train_goal_results(h: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`knobctl.goals.TRAIN_GOALS` with its measured value and whether it is met, from a
    :func:`training_headline`."""
    values = {"train_not_below_static": share(h["budgets_not_below_static"], h["budgets_with_static"]),
              "train_gain_where_choice": h["mean_gain_where_choice"],
              "train_gap_closed": h["gap_closed_where_choice"],
              "train_probe_distance": h["probe_minus_controller_where_choice"]}
    return [g.result(values[g.name]) for g in TRAIN_GOALS]


def _mean_interval(rows: Sequence[dict[str, Any]], a: str, b: str) -> tuple[float | None, float | None]:
    """Paired bootstrap 95% interval of ``a`` minus ``b``'s accuracy averaged over ``rows``' budgets: each sample's
    difference is its mean over the budgets, then samples are resampled. (None, None) where either is missing."""
    per = [e.get(PER_SAMPLE) or {} for e in rows]
    if not per or any(a not in p or b not in p for p in per):
        return None, None
    diff = torch.stack([p[a] - p[b] for p in per]).mean(0)  # [E]
    return gain_interval(diff)


def public_rows(evaluation: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluation rows without their per-sample tensors, as written to plots/train/training.json."""
    return [{k: v for k, v in e.items() if k != PER_SAMPLE} for e in evaluation]


def training_headline(summary: dict[str, Any], evaluation: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every held-out figure of a training run: the goals met (:func:`train_goal_results`), budgets at or above
    static, the figures of :func:`controller_goals`, the chance of running over, and the last training point's
    reward and violations, with the run's speed."""
    gains = [e["gain_over_static"] for e in evaluation if e["gain_over_static"] is not None]
    slow = [e["controller_slow_rate"] for e in evaluation]
    h = {
        "mean_gain_over_static": _r(sum(gains) / max(len(gains), 1)),
        "budgets_at_least_static": sum(g >= 0 for g in gains),
        "budgets_above_static": sum(g > 0 for g in gains),
        "budgets_with_static": len(gains),
        "budgets_significantly_below_static": sum(
            e["gain_ci95_high"] is not None and e["gain_ci95_high"] < 0 for e in evaluation),
        **controller_goals(evaluation),
        "mean_slow_rate": _r(sum(slow) / max(len(slow), 1)),
        "final_reward": summary["final"]["reward"],
        "final_violation_rate": summary["final"]["violation_rate"],
        "rollouts_per_s": summary["rollouts_per_s"],
    }
    return {**tally(train_goal_results(h)), **h}


def training_metrics(summary: dict[str, Any], evaluation: Sequence[dict[str, Any]],
                     headline: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics/train.json: the :data:`HEADLINE` figures of :func:`training_headline` (``headline``, if computed)."""
    h = headline or training_headline(summary, evaluation)
    return {"headline": {k: h[k] for k in HEADLINE}}


def training_detail(summary: dict[str, Any], evaluation: Sequence[dict[str, Any]], reward: dict[str, Any],
                    headline: dict[str, Any] | None = None) -> dict[str, Any]:
    """plots/train/training.json, the report's source: the run's summary, the reward weights, the whole headline
    (``headline``, if computed), each goal, and every evaluation row."""
    h = headline or training_headline(summary, evaluation)
    return {**summary, "reward": reward, "headline": h, "goals": train_goal_results(h),
            "evaluation": public_rows(evaluation)}


def evaluation_frame(evaluation: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Every evaluation row flat (tier shares as ``tier_share_<tier>`` columns), for plots/train/budgets.csv."""
    flat = []
    for i, e in enumerate(public_rows(evaluation)):
        row = {"budget": budget_key(i)}
        for k, v in e.items():
            if isinstance(v, dict):
                row.update({f"{k}_{name}": x for name, x in v.items()})
            else:
                row[k] = v
        flat.append(row)
    return pd.DataFrame(flat)
