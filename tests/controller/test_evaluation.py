import pandas as pd
import pytest
import torch

from knobctl.controller.evaluation import drift, gain_interval


def test_gain_interval_is_a_point_when_every_sample_agrees():
    assert gain_interval(torch.full((50,), 0.25)) == (0.25, 0.25)


def test_gain_interval_covers_the_mean_and_narrows_with_more_samples():
    one_in_ten = torch.tensor([1.0] + [0.0] * 9)  # mean gain 0.1
    small = gain_interval(one_in_ten.repeat(4))  # 40 samples
    large = gain_interval(one_in_ten.repeat(100))  # 1,000 samples
    assert small[0] < 0.1 < small[1] and large[0] < 0.1 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3  # ~ 1/sqrt(25) as wide
    assert small[0] >= 0.0  # never below the smallest possible mean
    assert large[0] > 0.07 and large[1] < 0.13  # +-1.96 * sqrt(0.09 / 1000) = +-0.019
    assert gain_interval(one_in_ten.repeat(4), seed=3) == gain_interval(one_in_ten.repeat(4), seed=3)


def test_a_one_answer_difference_on_400_samples_is_not_significant():
    diff = torch.zeros(400)
    diff[0] = 1.0  # the controller is right on one more sample than static
    lo, hi = gain_interval(diff)
    assert lo == 0.0 and hi > 0.0  # the interval touches zero: not a significant gain


def test_drift_reports_score_changes_and_latency_ratios():
    log = pd.DataFrame({"reason": ["refresh", "refresh", "missing"], "cached_score": [1.0, 0.0, float("nan")],
                        "fresh_score": [1.0, 1.0, 1.0], "cached_latency_ms": [10.0, 20.0, 1.0],
                        "fresh_latency_ms": [11.0, 19.0, 5.0]})
    d = drift(log)
    assert d["score_changed_share"] == 0.5
    assert d["latency_ratio_median"] == pytest.approx(1.025)  # median of 1.1 and 0.95
    assert d["latency_abs_rel_error_median"] == pytest.approx(0.075)
    assert drift(log[log["reason"] == "missing"]) == {}


def test_headline_intervals_pair_each_sample_over_the_budgets_where_a_choice_exists():
    from knobctl.controller.evaluation import PER_SAMPLE, controller_goals, public_rows

    def row(fit: float, ctrl: list[float], static: list[float], probe: list[float]) -> dict:
        t = {k: torch.tensor(v, dtype=torch.float32) for k, v in (("controller", ctrl), ("static", static), ("probe", probe))}
        acc = {k: float(v.mean()) for k, v in t.items()}
        return {"fit_share": fit, "static_accuracy": acc["static"], "controller_accuracy": acc["controller"],
                "probe_accuracy": acc["probe"], "oracle_accuracy": 1.0, "gain_ci95_low": 0.0,
                "controller_accuracy_within_budget": acc["controller"], "static_accuracy_within_budget": acc["static"],
                PER_SAMPLE: t}

    # two budgets with a choice: every sample's mean gain is 0.5 (1 at one budget, 0 at the other), so every
    # resample's mean is 0.5; the probe is 0.25 above the controller on every sample
    rows = [row(0.5, [1, 0, 1, 0], [0, 0, 0, 0], [1, 0.5, 1, 0.5]),
            row(0.7, [0, 1, 0, 1], [0, 0, 0, 0], [0.5, 1, 0.5, 1]),
            row(1.0, [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0])]  # everything fits: not a choice
    g = controller_goals(rows)
    assert g["mean_gain_where_choice"] == 0.5
    assert (g["mean_gain_where_choice_ci95_low"], g["mean_gain_where_choice_ci95_high"]) == (0.5, 0.5)
    assert (g["probe_minus_controller_ci95_low"], g["probe_minus_controller_ci95_high"]) == (0.25, 0.25)
    assert all(PER_SAMPLE not in e for e in public_rows(rows)) and PER_SAMPLE in rows[0]


def test_the_metrics_hold_the_headline_and_the_detail_every_figure_and_goal():
    from knobctl.controller.evaluation import HEADLINE, PER_SAMPLE, training_detail, training_metrics

    t = {k: torch.tensor(v) for k, v in (("controller", [1.0, 1.0]), ("static", [0.0, 1.0]), ("probe", [1.0, 1.0]))}
    row = {"budget_ms": 10.0, "fit_share": 0.5, "static_accuracy": 0.5, "controller_accuracy": 1.0,
           "probe_accuracy": 1.0, "oracle_accuracy": 1.0, "gain_ci95_low": 0.0, "gain_ci95_high": 1.0,
           "gain_over_static": 0.5, "controller_slow_rate": 0.1, "controller_accuracy_within_budget": 1.0,
           "static_accuracy_within_budget": 0.5, PER_SAMPLE: t}
    summary = {"final": {"reward": 0.9, "violation_rate": 0.2}, "rollouts_per_s": 1000, "steps": 5}
    metrics = training_metrics(summary, [row])
    assert list(metrics) == ["headline"] and list(metrics["headline"]) == list(HEADLINE)
    h = metrics["headline"]
    assert h["mean_gain_where_choice"] == 0.5 and h["gap_closed_where_choice"] == 1.0
    assert (h["goals_met"], h["goals_measured"]) == (4, 4)
    detail = training_detail(summary, [row], {"alpha": 1.0})
    assert detail["steps"] == 5 and detail["reward"] == {"alpha": 1.0} and PER_SAMPLE not in detail["evaluation"][0]
    assert [g["name"] for g in detail["goals"]] == ["train_not_below_static", "train_gain_where_choice",
                                                    "train_gap_closed", "train_probe_distance"]
    assert detail["headline"]["budgets_above_static"] == 1  # every figure, not only the headline's
