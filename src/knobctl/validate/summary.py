"""The validation's numbers from the measured requests: per budget and method, the run's summary, its goals.

Each method's answer to a (sample, budget) is one measured request (:mod:`knobctl.validate.measure`;
the baselines are fixed configurations, so one request serves every method and budget that uses
it). A request *violates* its budget when its measured latency exceeds it; accuracy within budget
counts a late answer as wrong.

``best_measured`` is a bound, not a method (:func:`best_measured_rows`): for each (sample, budget) it takes
the best of *every* request measured for that sample (any method's, at any budget) that met the budget on
the clock. Every method's answer there is one of those requests, so its accuracy within budget is at least
every method's, sample by sample: an upper bound on that metric by construction. Its accuracy alone is not a
bound (a method that runs over its budget may answer better). The per-sample oracle of the test tables
(:mod:`knobctl.table.measures`) is one of its candidates: validate measures the oracle's configuration too.

:func:`summarize` is data/validate/summary.json (every number, the report's source); :func:`validation_metrics`
is metrics/validate.json, its :data:`HEADLINE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from knobctl.goals import VALIDATE_GOALS, goal, share, tally
from knobctl.intervals import NOT_BELOW, paired_interval
from knobctl.io import round4 as _r

METHODS = ("controller", "lookup", "probe", "static", "full", "smallest", "random", "best_measured")
#: The fixed configurations validate chooses per (sample, budget) before measuring. ``oracle`` (the per-sample
#: oracle's configuration on the test rollouts, at the scaled estimate) is measured as best_measured's likeliest
#: candidate; it is not reported as a method.
BASELINES = ("lookup", "probe", "static", "full", "smallest", "random", "oracle")


def deadline_ms(frame: pd.DataFrame) -> pd.Series:
    """Each row's deadline: its budget times the machine's speed when its sample started (column ``speed``, the
    budgets that follow the machine of :mod:`knobctl.validate.measure`); the budget itself where there is none."""
    return frame["budget_ms"] * frame["speed"] if "speed" in frame else frame["budget_ms"]


def best_measured_rows(requests: pd.DataFrame, budgets: Sequence[float]) -> pd.DataFrame:
    """``best_measured``, one row per (sample, budget): among all the sample's measured requests, the
    best-scoring one that met the budget (ties: the faster); where none did, the fastest one."""
    cand = requests.drop(columns=["budget_ms"]).merge(pd.DataFrame({"budget_ms": list(budgets)}), how="cross")
    cand = cand.assign(over=cand["latency_ms"] > deadline_ms(cand))
    cand = cand.assign(rank_score=cand["score"].where(~cand["over"], -1.0))  # a late answer never beats one in time
    best = cand.sort_values(["sample_id", "budget_ms", "rank_score", "latency_ms"],
                            ascending=[True, True, False, True], kind="stable")
    return best.drop_duplicates(["sample_id", "budget_ms"]).drop(columns=["rank_score"]).assign(method="best_measured")


def method_rows(requests: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, budget, sample): the request that answers it (baselines share them),
    with ``over``: whether it missed that budget. best_measured's rows come from :func:`best_measured_rows`."""
    ctrl = requests[requests["kind"] == "controller"].assign(method="controller")
    fixed = requests[requests["kind"] == "fixed"].drop(columns=["budget_ms"])
    key = ["sample_id", "config", *(["repeat"] if "repeat" in fixed else [])]
    repeated = fixed.duplicated(key)  # one measurement per (sample, configuration, repeat), shared by the methods
    if repeated.any():
        raise ValueError(f"fixed-configuration requests repeat a (sample, configuration): "
                         f"{fixed.loc[repeated, key].head(1).to_dict('records')}")
    base = chosen[chosen["method"].isin(METHODS)].merge(fixed, on=["sample_id", "config"], how="left")
    rows = pd.concat([ctrl, base], ignore_index=True)
    rows = rows.assign(over=rows["latency_ms"] > deadline_ms(rows))
    budgets = sorted(ctrl["budget_ms"].unique())
    return pd.concat([rows, best_measured_rows(requests, budgets)], ignore_index=True) if len(requests) else rows


def paired_gains(rows: pd.DataFrame, budgets: Sequence[float], other: str,
                 seed: int = 0) -> tuple[list[dict[str, Any] | None], dict[str, Any] | None]:
    """The controller minus ``other`` in accuracy within budget (a late answer scores 0), paired by sample:
    per budget the mean and its bootstrap 95% interval (None where ``other`` has no rows), and the same for the
    mean over budgets of each sample's differences (samples measured at every budget)."""
    wide = (rows.assign(v=rows["score"] * ~rows["over"])  # a sample's repeats averaged: the unit resampled
            .pivot_table(index=["budget_ms", "sample_id"], columns="method", values="v", aggfunc="mean"))
    if other not in wide or "controller" not in wide:
        return [None] * len(budgets), None
    diff = (wide["controller"] - wide[other]).dropna()
    per: list[dict[str, Any] | None] = []
    for b in budgets:
        d = diff[np.isclose(diff.index.get_level_values("budget_ms"), b)]
        per.append(None if d.empty else _gain(d.to_numpy(), seed))
    by_sample = diff.unstack("budget_ms").dropna()  # [S, B]
    overall = None if by_sample.empty or by_sample.shape[1] != len(budgets) else _gain(
        by_sample.mean(axis=1).to_numpy(), seed)
    return per, overall


def _gain(diff: np.ndarray, seed: int) -> dict[str, Any]:
    lo, hi = paired_interval(diff, seed)
    return {"gain": _r(float(diff.mean())), "ci95": [lo, hi], "samples": len(diff)}


def summarize(requests: pd.DataFrame, chosen: pd.DataFrame, budgets: Sequence[float],
              calibration: tuple[float, ...], error_samples: int = 0) -> dict[str, Any]:
    """Every method at every budget (accuracy, latency, violations, accuracy within budget), the run's summary and
    each of :data:`knobctl.goals.VALIDATE_GOALS` judged on it. ``error_samples``: test samples no method could be
    asked (their error rows in the requests table), counted beside the measured ones."""
    rows = method_rows(requests, chosen)
    vs_lookup, lookup_overall = paired_gains(rows, budgets, "lookup")
    vs_random, _ = paired_gains(rows, budgets, "random")
    shares = chosen.groupby("budget_ms")["fit_share"].mean() if "fit_share" in chosen else pd.Series(dtype=float)
    per_budget: dict[str, dict[str, Any]] = {}
    for b, lookup_gain, random_gain in zip(budgets, vs_lookup, vs_random):
        at = rows[np.isclose(rows["budget_ms"], b)]
        share = shares[np.isclose(shares.index, b)]
        entry: dict[str, Any] = {"budget_ms": b, "fit_share": _r(float(share.iloc[0])) if len(share) else None,
                                 "controller_vs_lookup": lookup_gain, "controller_vs_random": random_gain}
        for m in METHODS:
            r = at[at["method"] == m]
            entry[m] = None if r.empty else {
                "accuracy": _r(r["score"].mean()), "latency_mean_ms": _r(r["latency_ms"].mean()),
                "latency_p95_ms": _r(r["latency_ms"].quantile(0.95)), "violation_rate": _r(r["over"].mean()),
                # an answer that missed its budget counts as wrong: what a latency SLO delivers
                "accuracy_within_budget": _r((r["score"] * ~r["over"]).mean()),
                **({"config": r["config"].iloc[0]} if m in ("static", "full", "smallest") else {}),
            }
        per_budget[f"{b:.2f}ms"] = entry
    with_static = [e for e in per_budget.values() if e["static"] is not None]
    gains = [e["controller"]["accuracy"] - e["static"]["accuracy"] for e in with_static]
    gains_in = [e["controller"]["accuracy_within_budget"] - e["static"]["accuracy_within_budget"] for e in with_static]
    gap = sum(e["best_measured"]["accuracy_within_budget"] - e["static"]["accuracy_within_budget"] for e in with_static)
    # The violation goal holds where a budget is fair: the cheapest configuration meets it at its own p95.
    small = rows[rows["method"] == "smallest"]
    small_p95 = (small["latency_ms"] / deadline_ms(small)).groupby(small["budget_ms"]).quantile(0.95)
    fair = [e for e in per_budget.values() if float(small_p95[np.isclose(small_p95.index, e["budget_ms"])].iloc[0]) <= 1]
    ctrl, fixed = requests[requests["kind"] == "controller"], requests[requests["kind"] == "fixed"]
    est = requests["estimated_ms"] / requests["latency_ms"] - 1
    compared = [e for e in per_budget.values() if e["controller_vs_lookup"] is not None]
    # A choice exists where, at the live speed, some but not all configurations fit the average request.
    choice = [e for e in per_budget.values() if e["fit_share"] is not None and 0 < e["fit_share"] < 1
              and e["controller_vs_random"] is not None]
    summary = {
        "samples": int(requests["sample_id"].nunique()), "error_samples": error_samples, "budgets": list(budgets),
        "requests": len(requests),
        "budgets_with_lookup": len(compared),
        "budgets_not_below_lookup_within_budget": sum(
            e["controller_vs_lookup"]["ci95"][0] >= NOT_BELOW for e in compared),
        "mean_gain_over_lookup_within_budget": None if lookup_overall is None else lookup_overall["gain"],
        "mean_gain_over_lookup_within_budget_ci95_low": None if lookup_overall is None else lookup_overall["ci95"][0],
        "mean_gain_over_lookup_within_budget_ci95_high": None if lookup_overall is None else lookup_overall["ci95"][1],
        "budgets_with_choice": len(choice),
        "budgets_above_random_where_choice": sum(e["controller_vs_random"]["ci95"][0] > 0 for e in choice),
        "worst_lookup_violation_rate_where_cheapest_meets": _r(max(e["lookup"]["violation_rate"] for e in fair))
        if fair and all(e.get("lookup") for e in fair) else None,
        "mean_gain_over_static": _r(np.mean(gains)) if gains else None,
        "budgets_at_least_static": sum(g >= 0 for g in gains), "budgets_with_static": len(gains),
        "worst_gain_over_static": _r(min(gains)) if gains else None,
        "budgets_within_slack_of_static": sum(bool(goal("validate_static_slack").met(g)) for g in gains),
        "mean_gain_over_static_within_budget": _r(np.mean(gains_in)) if gains_in else None,
        "budgets_at_least_static_within_budget": sum(g >= 0 for g in gains_in),
        "worst_violation_rate": _r(max(e["controller"]["violation_rate"] for e in per_budget.values())),
        "budgets_cheapest_meets": len(fair),
        "worst_violation_rate_where_cheapest_meets": _r(max(e["controller"]["violation_rate"] for e in fair))
        if fair else None,
        # Within budget, where best_measured is a bound; undefined when it is not above static in total (float
        # sums of equal accuracies are not exactly 0, hence the tolerance).
        "static_to_best_measured_gap_closed": _r(sum(gains_in) / gap) if gap > 1e-6 else None,
        "controller_overhead_ms": _r(ctrl["controller_ms"].median()),
        "controller_overhead_share": _r(ctrl["controller_ms"].median() / ctrl["latency_ms"].mean()),
        "estimator_mape": _r(est.abs().mean()),
        "measured_over_estimated_median": _r((requests["latency_ms"] / requests["estimated_ms"]).median()),
        "measured_over_estimated_fixed_p10_p50_p90": [_r(q) for q in np.quantile(
            fixed["latency_ms"] / fixed["estimated_ms"], [0.1, 0.5, 0.9])] if len(fixed) else None,
        # the deadlines' scale: the machine's median speed over the burst's, per sample (1 where budgets are fixed)
        "speed_p10_p50_p90": [_r(q) for q in np.quantile(
            requests.groupby("sample_id")["speed"].first(), [0.1, 0.5, 0.9])] if "speed" in requests and len(
            requests) else None,
        "calibration": {"scale": calibration[0], "overhead_ms": calibration[1],
                        **({"typical": calibration[2]} if len(calibration) > 2 else {})},
        "controller_budget_scale_median": _r(_given_scale(ctrl)),
        # The probe, random and oracle choices are made with the test tables and are scored by their measured
        # requests; greedy decoding makes the two the same answer, and this counts the requests where they are not.
        "requests_differing_from_rollouts": int((requests["score"] != requests["rollout_score"]).sum()),
    }
    return {"summary": summary, "per_budget": per_budget, "goals": validate_goal_results(summary)}


def validate_goal_results(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of :data:`knobctl.goals.VALIDATE_GOALS` with its measured value and whether it is met, from
    :func:`summarize`'s summary; a goal over every budget is measured as the share of budgets that pass."""
    values = {
        "validate_not_below_lookup": share(s["budgets_not_below_lookup_within_budget"], s["budgets_with_lookup"]),
        "validate_gain_over_lookup": s["mean_gain_over_lookup_within_budget"],
        "validate_above_random": share(s["budgets_above_random_where_choice"], s["budgets_with_choice"]),
        "validate_violations": s["worst_violation_rate_where_cheapest_meets"],
        "validate_overhead": s["controller_overhead_share"],
        "validate_static_slack": s["worst_gain_over_static"],
    }
    return [g.result(values[g.name]) for g in VALIDATE_GOALS]


def _given_scale(ctrl: pd.DataFrame) -> float:
    """Median budget / budget given to the controller (the live speed and overhead correction)."""
    return float((ctrl["budget_ms"] / ctrl["controller_budget_ms"]).median()) if len(ctrl) else float("nan")


#: metrics/validate.json: the few figures compared across experiments. Every other number, and every budget's,
#: is in data/validate/summary.json and plots/validate/*.csv.
HEADLINE = ("goals_met", "goals_measured", "mean_gain_over_lookup_within_budget",
            "mean_gain_over_lookup_within_budget_ci95_low", "mean_gain_over_lookup_within_budget_ci95_high",
            "budgets_not_below_lookup_within_budget", "budgets_with_lookup", "budgets_above_random_where_choice",
            "budgets_with_choice", "worst_violation_rate_where_cheapest_meets", "controller_overhead_share",
            "mean_gain_over_static_within_budget", "static_to_best_measured_gap_closed",
            "measured_over_estimated_median", "error_samples")


def validation_metrics(full: dict[str, Any]) -> dict[str, Any]:
    """metrics/validate.json from :func:`summarize`'s result: its :data:`HEADLINE` figures and goals met."""
    figures = {**full["summary"], **tally(full["goals"])}
    return {"headline": {k: figures[k] for k in HEADLINE}}
