"""Validation metrics from hand-made measured requests: method rows, per-budget numbers, the summary."""

from __future__ import annotations

import numpy as np
import pytest

from knobctl.validate.summary import METHODS, method_rows, summarize
from tests.conftest import validation_frames


def test_method_rows_share_fixed_requests():
    req, chosen = validation_frames()
    rows = method_rows(req, chosen)
    assert len(rows) == 4 + len(chosen) and set(rows["method"]) == set(METHODS)
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
    assert at20["oracle"]["accuracy"] == 1.0 and at20["full"]["violation_rate"] == 1.0
    s = m["summary"]
    assert s["mean_gain_over_static"] == 0.25 and s["budgets_at_least_static"] == 2
    assert s["worst_violation_rate"] == 0.5
    assert s["static_to_oracle_gap_closed"] == 1.0  # gains 0 + 0.5 over gaps 0 + 0.5
    assert s["controller_overhead_ms"] == 1.0 and s["controller_overhead_share"] == round(1.0 / 14.5, 4)
    assert s["calibration"] == {"scale": 1.2, "overhead_ms": 0.8} and s["samples"] == 2
    assert s["requests_differing_from_rollouts"] == 1
    # within budget: controller 0 vs static 0.5 at 10 ms, 1.0 vs 0.5 at 20 ms
    assert s["mean_gain_over_static_within_budget"] == 0.0 and s["budgets_at_least_static_within_budget"] == 1
    assert s["measured_over_estimated_fixed_p10_p50_p90"][1] == round(float(np.median([0.8, 25 / 23, 0.8, 24 / 23])), 4)
    assert s["measured_over_estimated_median"] == pytest.approx(np.median(req["latency_ms"] / req["estimated_ms"]),
                                                                abs=1e-4)


def test_gap_closed_is_undefined_when_the_oracle_is_not_above_static():
    req, chosen = validation_frames()
    same = chosen.copy()
    same.loc[same["method"] == "oracle", "config"] = "low/k4/b12"  # the oracle picks what static picks
    assert summarize(req, same, (10.0, 20.0), (1.0, 0.0))["summary"]["static_to_oracle_gap_closed"] is None
