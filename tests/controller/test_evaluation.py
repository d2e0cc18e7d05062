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
