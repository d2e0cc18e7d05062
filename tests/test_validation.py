"""Validation: params, the speed tracker, baselines on hand-made tables, the metrics' numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knobctl.controller_training import CacheTables, complexity_of
from knobctl.knobs import KnobGrid
from tests.conftest import validation_frames
from knobctl.validation import (
    METHODS, Baselines, SpeedTracker, ValidateParams, default_budgets, method_rows, summarize,
)

GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16))
CONFIGS = tuple(GRID.configs())  # low/k4/b12 ... high/k8/b16
LABELS = [k.label for k in CONFIGS]


def tables(scores: list[list[float]], latency: list[list[float]]) -> CacheTables:
    s = len(scores)
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(s)]), question_types=np.array(["yes/no"] * s),
                       configs=CONFIGS, tiers=("low", "high"), scores=torch.tensor(scores, dtype=torch.float32),
                       latency_ms=torch.tensor(latency), language=torch.zeros(s, 2), vision=torch.zeros(s, 2, 2),
                       complexity=complexity_of(CONFIGS))


# Latency per config in grid order: low 10-13 ms, high 20-23 ms.
LAT = [10.0, 11.0, 12.0, 13.0, 20.0, 21.0, 22.0, 23.0]
# val: low configs right on half the samples, high ones on all; high/k4/b12 best by a hair (it is the only
# high config right on sample 3).
VAL = tables([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1],
              [0, 0, 0, 0, 1, 0, 0, 0]], [LAT] * 4)
# test: sample 0 is right everywhere, sample 1 only at high/k8/b16, sample 2 nowhere (NaN = error at one cell).
TEST = tables([[1] * 8, [0] * 7 + [1], [0] * 7 + [float("nan")]], [LAT, LAT, [x + 1 for x in LAT]])


def test_params_are_validated():
    assert ValidateParams.from_params({"budgets": [20, 30]}).budgets == (20, 30)
    with pytest.raises(ValueError, match="validate.budgets"):
        ValidateParams.from_params({"budgets": [20, -1]})
    with pytest.raises(ValueError, match="validate.calibrate='yes'; write true or false"):
        ValidateParams.from_params({"calibrate": "yes"})
    with pytest.raises(ValueError, match="validate.speed_quantile=1.5"):
        ValidateParams.from_params({"speed_quantile": 1.5})
    with pytest.raises(ValueError, match="validate.num_samples"):
        ValidateParams.from_params({"num_samples": 0})


def test_speed_tracker_follows_recent_requests():
    t = SpeedTracker([2.0], [1.0], window=3)
    assert t.controller_budget(21.0) == 10.0  # (21 - 1) / 2
    for measured in (30.0, 30.0, 30.0):
        t.observe(measured, 20.0)  # 1.5x pushes the burst's 2.0 out of the window
    t.observe(45.0, 20.0, controller_ms=3.0)
    assert t.scale == 1.5 and t.overhead_ms == 2.0  # median of [1.0, 3.0]
    slow_side = SpeedTracker([1.0, 1.1, 1.2, 1.3, 2.0], quantile=0.75)
    assert slow_side.scale == 1.3  # plans for a slow request, not a typical one
    frozen = SpeedTracker([2.0], [1.0], live=False)
    frozen.observe(10.0, 20.0)
    assert frozen.scale == 2.0


def test_default_budgets_span_the_scaled_estimated_range():
    assert default_budgets(TEST, 3) == (10.0, round((10.0 + 23.0 * 1.05) / 2, 2), round(23.0 * 1.05, 2))
    assert default_budgets(TEST, 2, scale=2.0) == (20.0, round(46.0 * 1.05, 2))


def test_baselines_on_a_hand_made_table():
    b = Baselines(TEST, VAL, budgets=[9.0, 13.5, 20.5, 30.0], seed=0)
    c = b.choose(0, scale=1.0)
    assert c["static"] == [-1, LABELS.index("low/k4/b12"), LABELS.index("high/k4/b12"), LABELS.index("high/k4/b12")]
    assert c["full"] == [7] * 4 and c["smallest"] == [0] * 4
    assert c["oracle"][1] == 0  # all right: a tie goes to the first in grid order
    assert c["random"][0] == 0 and 0 <= c["random"][1] <= 3 and c["random"][3] in range(8)  # nothing fits: cheapest
    one = b.choose(1, scale=1.0)
    assert one["oracle"] == [0, 0, 0, 7]  # sample 1 is right only at high/k8/b16 (23 ms)
    assert b.choose(2, 1.0)["oracle"][3] != 7  # an error cell never wins
    # At twice the estimated speed nothing but the cheapest fits 20.5 ms: oracle and random follow the
    # current speed, static stays what it was chosen for the run.
    slow = b.choose(0, scale=2.0)
    assert slow["oracle"][2] == 0 and slow["random"][2] == 0 and slow["static"] == c["static"]
    assert Baselines(TEST, VAL, [20.5], seed=0, static_scale=2.0).choose(0, 1.0)["static"] == [0]
    assert b.choose(0, 1.0) == b.choose(0, 1.0)  # seeded per sample


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
