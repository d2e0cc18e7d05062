"""Validation metrics from hand-made measured requests: method rows, per-budget numbers, the summary."""

from __future__ import annotations

import numpy as np
import pytest

from knobctl.validate.summary import METHODS, best_measured_rows, method_rows, summarize, validation_metrics
from tests.conftest import validation_frames


def test_method_rows_share_fixed_requests():
    req, chosen = validation_frames()
    rows = method_rows(req, chosen)
    reported = chosen[chosen["method"] != "oracle"]  # measured, but only as best_measured's candidate
    assert len(rows) == 4 + len(reported) + 4 and set(rows["method"]) == set(METHODS)  # + 4 best_measured rows
    full_b = rows[(rows["method"] == "full") & (rows["sample_id"] == "b")]
    assert full_b["latency_ms"].tolist() == [24.0, 24.0] and full_b["budget_ms"].tolist() == [10.0, 20.0]


def test_summary_numbers():
    req, chosen = validation_frames()
    m = summarize(req, chosen, (10.0, 20.0), (1.2, 0.8))
    at10, at20 = m["per_budget"]["10.00ms"], m["per_budget"]["20.00ms"]
    assert at10["controller"] == {"accuracy": 0.5, "latency_mean_ms": 10.5, "latency_p95_ms": 11.85,
                                  "violation_rate": 0.5, "accuracy_within_budget": 0.0}  # a's right answer was late
    assert at20["full"]["accuracy"] == 1.0 and at20["full"]["accuracy_within_budget"] == 0.0  # 25 and 24 ms
    assert at10["static"]["accuracy"] == 0.5 and at10["static"]["config"] == "low/k4/b12"
    assert at20["controller"]["accuracy"] == 1.0 and at20["static"]["accuracy"] == 0.5
    assert at20["best_measured"]["accuracy"] == 1.0 and at20["full"]["violation_rate"] == 1.0
    s = m["summary"]
    assert s["mean_gain_over_static"] == 0.25 and s["budgets_at_least_static"] == 2
    assert s["worst_violation_rate"] == 0.5
    # within budget: controller gains -0.5 and +0.5 over static, best_measured's gaps 0 and 0.5
    assert s["static_to_best_measured_gap_closed"] == 0.0
    assert at20["probe"]["accuracy"] == 1.0 and at20["probe"]["accuracy_within_budget"] == 0.0  # full: 25 / 24 ms
    assert s["budgets_within_slack_of_static"] == 2 and s["budgets_cheapest_meets"] == 2  # smallest's p95 is 8 ms
    assert s["worst_violation_rate_where_cheapest_meets"] == 0.5
    assert s["controller_overhead_ms"] == 1.0 and s["controller_overhead_share"] == round(1.0 / 14.5, 4)
    assert s["calibration"] == {"scale": 1.2, "overhead_ms": 0.8} and s["samples"] == 2
    assert s["requests_differing_from_rollouts"] == 1
    # within budget: controller 0 vs static 0.5 at 10 ms, 1.0 vs 0.5 at 20 ms
    assert s["mean_gain_over_static_within_budget"] == 0.0 and s["budgets_at_least_static_within_budget"] == 1
    assert s["measured_over_estimated_fixed_p10_p50_p90"][1] == round(float(np.median([0.8, 25 / 23, 0.8, 24 / 23])), 4)
    assert s["measured_over_estimated_median"] == pytest.approx(np.median(req["latency_ms"] / req["estimated_ms"]),
                                                                abs=1e-4)


def test_a_deadline_is_the_budget_times_the_speed_its_sample_started_at():
    req, chosen = validation_frames()
    # sample a ran while the machine was 1.25x slower than in the burst: its 12 ms answer met 10 ms x 1.25
    moved = summarize(req.assign(speed=np.where(req["sample_id"] == "a", 1.25, 1.0)), chosen, (10.0, 20.0), (1.2, 0.8))
    at10 = moved["per_budget"]["10.00ms"]["controller"]
    assert at10["violation_rate"] == 0.0 and at10["accuracy_within_budget"] == 0.5
    steady = summarize(req.assign(speed=1.0), chosen, (10.0, 20.0), (1.2, 0.8))
    assert steady["per_budget"] == summarize(req, chosen, (10.0, 20.0), (1.2, 0.8))["per_budget"]  # the budgets as is
    assert moved["summary"]["speed_p10_p50_p90"] == [1.025, 1.125, 1.225] and steady["summary"]["speed_p10_p50_p90"] == [
        1.0, 1.0, 1.0]


def test_controller_against_lookup_and_random_paired_by_sample():
    req, chosen = validation_frames()
    m = summarize(req, chosen, (10.0, 20.0), (1.2, 0.8))
    at10, at20 = m["per_budget"]["10.00ms"], m["per_budget"]["20.00ms"]
    # within budget at 10 ms: controller a late (0), b wrong (0); lookup low/k4/b12: a right in 8 ms, b wrong
    assert at10["lookup"]["accuracy_within_budget"] == 0.5 and at10["controller_vs_lookup"]["gain"] == -0.5
    assert at10["controller_vs_lookup"]["ci95"] == [-1.0, 0.0]  # every resample of the differences [-1, 0]
    # at 20 ms lookup's full configuration is late for both (25, 24 ms), the controller in time and right for both
    assert at20["controller_vs_lookup"] == {"gain": 1.0, "ci95": [1.0, 1.0], "samples": 2}
    s = m["summary"]
    assert s["budgets_with_lookup"] == 2 and s["budgets_not_below_lookup_within_budget"] == 1
    assert s["mean_gain_over_lookup_within_budget"] == 0.25  # per sample: a (-1 + 1) / 2, b (0 + 1) / 2
    assert s["mean_gain_over_lookup_within_budget_ci95_low"] == 0.0
    assert s["mean_gain_over_lookup_within_budget_ci95_high"] == 0.5
    # a choice exists only at 10 ms (half the configurations fit); there the controller is not above random
    assert at10["fit_share"] == 0.5 and s["budgets_with_choice"] == 1 and s["budgets_above_random_where_choice"] == 0
    assert at10["controller_vs_random"]["gain"] == -0.5
    assert s["worst_lookup_violation_rate_where_cheapest_meets"] == 1.0  # lookup's 25 and 24 ms at 20


def test_gap_closed_is_undefined_when_best_measured_is_not_above_static():
    req, chosen = validation_frames()
    req["score"] = 1.0  # every request right and the fixed ones in time: static is as good as best_measured
    summary = summarize(req, chosen, (10.0, 20.0), (1.0, 0.0))["summary"]
    assert summary["static_to_best_measured_gap_closed"] is None


def test_best_measured_takes_the_best_request_that_met_the_budget_from_any_method():
    req, _ = validation_frames()
    o = best_measured_rows(req, (10.0, 20.0)).set_index(["sample_id", "budget_ms"])
    # b at 20 ms: its only right answer in time is the controller's own request (18 ms)
    assert o.loc[("b", 20.0), "kind"] == "controller" and o.loc[("b", 20.0), "score"] == 1.0
    # a at 10 ms: the controller's right answer took 12 ms; the fixed low/k4/b12 one took 8
    assert o.loc[("a", 10.0), "latency_ms"] == 8.0 and not o.loc[("a", 10.0), "over"]
    # a at 20 ms: three right answers in time; the fastest wins the tie
    assert o.loc[("a", 20.0), "latency_ms"] == 8.0
    # nothing in time: the fastest request, counted over
    late = best_measured_rows(req, (5.0,)).set_index("sample_id")
    assert late.loc["a", "latency_ms"] == 8.0 and bool(late.loc["a", "over"])


def test_best_measured_bounds_every_method_within_budget_sample_by_sample():
    rng = np.random.default_rng(0)
    req, chosen = validation_frames()
    for trial in range(20):  # random scores and clocks on the same requests and choices
        r = req.assign(score=rng.integers(0, 2, len(req)).astype(float), latency_ms=rng.uniform(5, 30, len(req)))
        rows = method_rows(r, chosen).assign(within=lambda d: d["score"] * ~d["over"])
        best = rows.groupby(["sample_id", "budget_ms", "method"])["within"].max().unstack("method")
        assert (best["best_measured"].to_numpy()[:, None] >= best.drop(columns="best_measured").to_numpy()).all(), trial
        m = summarize(r, chosen, (10.0, 20.0), (1.0, 0.0))["per_budget"]
        for e in m.values():
            assert all(e["best_measured"]["accuracy_within_budget"] >= e[k]["accuracy_within_budget"] for k in METHODS)


def test_repeated_requests_average_per_sample_and_a_duplicate_measurement_is_refused():
    import pandas as pd

    req, chosen = validation_frames()
    once = summarize(req.assign(repeat=0), chosen, (10.0, 20.0), (1.2, 0.8))
    # a second repeat where every request ran 10 ms slower: at 20 ms the controller's answers arrive late
    slow = req.assign(repeat=1, latency_ms=req["latency_ms"] + 10.0)
    twice = summarize(pd.concat([req.assign(repeat=0), slow], ignore_index=True), chosen, (10.0, 20.0), (1.2, 0.8))
    at20_once, at20_twice = once["per_budget"]["20.00ms"], twice["per_budget"]["20.00ms"]
    assert at20_once["controller"]["accuracy_within_budget"] == 1.0  # 19 and 18 ms
    assert at20_twice["controller"]["accuracy_within_budget"] == 0.5  # 29 and 28 ms in the second repeat
    assert at20_twice["controller_vs_lookup"]["samples"] == 2  # repeats are averaged per sample, not resampled
    assert at20_twice["controller_vs_lookup"]["gain"] == 0.5
    with pytest.raises(ValueError, match="repeat a"):
        summarize(pd.concat([req, req[req["kind"] == "fixed"]]), chosen, (10.0, 20.0), (1.2, 0.8))


def test_goals_are_judged_on_the_summary_and_the_metrics_keep_the_headline():
    req, chosen = validation_frames()
    full = summarize(req, chosen, (10.0, 20.0), (1.2, 0.8))
    goals = {g["name"]: g for g in full["goals"]}
    assert goals["validate_not_below_lookup"]["measured"] == 0.5 and goals["validate_not_below_lookup"]["met"] is False
    assert goals["validate_gain_over_lookup"] == {
        "name": "validate_gain_over_lookup", "measured": 0.25, "met": True,
        "goal": "mean accuracy within budget over lookup >= 2 points (point estimate; 95% interval beside it)"}
    assert goals["validate_overhead"]["met"] is False  # 1 ms of 14.5
    # accuracy alone: the controller 0.5 and 1.0 against static's 0.5 and 0.5, so its worst gain is 0
    assert goals["validate_static_slack"]["measured"] == 0.0 and goals["validate_static_slack"]["met"] is True
    h = validation_metrics(full)
    assert list(h) == ["headline"] and h["headline"]["goals_measured"] == len(full["goals"])
    assert h["headline"]["goals_met"] == sum(g["met"] for g in full["goals"])
    assert h["headline"]["mean_gain_over_lookup_within_budget"] == 0.25
