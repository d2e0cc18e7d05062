"""Validation: params, the speed tracker, baselines on hand-made tables, the metrics' numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knobctl.controller.tables import CacheTables, complexity_of
from knobctl.knobs import KnobGrid
from knobctl.validate.measure import Baselines, SpeedTracker, ValidateParams

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
    with pytest.raises(ValueError, match="validate.calibrate='yes': write true or false"):
        ValidateParams.from_params({"calibrate": "yes"})
    with pytest.raises(ValueError, match="validate.speed_quantile=1.5"):
        ValidateParams.from_params({"speed_quantile": 1.5})
    with pytest.raises(ValueError, match="validate.budgets_follow_speed='yes': write true or false"):
        ValidateParams.from_params({"budgets_follow_speed": "yes"})
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
    assert slow_side.typical == 1.2  # the deadline's speed is the median, whatever the planning quantile


def test_jitter_window_takes_the_tail_over_many_requests_and_the_speed_over_few():
    burst = [1.0] * 19 + [2.0]  # one slow request in 20
    plain = SpeedTracker(burst, window=5, quantile=0.95)
    split = SpeedTracker(burst, window=5, quantile=0.95, jitter_window=20)
    assert plain.scale == pytest.approx(1.8)  # the slow request is 1 of the last 5
    assert split.scale == pytest.approx(1.05)  # 1 of 20, around a speed of 1.0 (np.quantile interpolates)
    for _ in range(5):
        split.observe(30.0, 20.0)  # the machine slows to 1.5x
    assert split.typical == 1.5
    # each ratio is taken over the median when it came: 1.0 for the first two, 1.5 after
    assert list(split.jitter) == [1.0] * 14 + [2.0, 1.5, 1.5, 1.0, 1.0, 1.0]
    assert split.scale == pytest.approx(1.5 * 1.525)  # sorted jitter [.., 1.5, 2.0]: 1.5 + 0.05 x 0.5
    with pytest.raises(ValueError, match="validate.jitter_window"):
        ValidateParams.from_params({"jitter_window": -1})


def test_every_baseline_but_static_meets_the_deadline_the_speed_sets():
    b = Baselines(TEST, VAL, budgets=[15.0], seed=0)
    # at speed 1 a 15 ms budget fits only the low configurations; a machine running at 1.6x its burst's speed
    # moves the deadline to 24 ms, where lookup buys high/k4/b12 and the oracle the one right configuration
    assert b.choose(1, scale=1.0)["lookup"] == [0] and b.choose(1, scale=1.0)["oracle"] == [0]
    at = b.choose(1, scale=1.0, speed=1.6)
    assert at["lookup"] == [4] and at["oracle"] == [7] and at["static"] == b.choose(1, scale=1.0)["static"]


def test_baselines_on_a_hand_made_table():
    b = Baselines(TEST, VAL, budgets=[9.0, 13.5, 20.5, 30.0], seed=0)
    c = b.choose(0, scale=1.0)
    assert c["static"] == [-1, LABELS.index("low/k4/b12"), LABELS.index("high/k4/b12"), LABELS.index("high/k4/b12")]
    assert c["full"] == [7] * 4 and c["smallest"] == [0] * 4
    assert c["oracle"][1] == 0  # all right: a tie goes to the first in grid order
    assert c["random"][0] == 0 and 0 <= c["random"][1] <= 3 and c["random"][3] in range(8)  # nothing fits: cheapest
    one = b.choose(1, scale=1.0)
    assert one["oracle"] == [0, 0, 0, 7]  # sample 1 is right only at high/k8/b16 (23 ms)
    assert b.choose(2, 1.0)["oracle"][3] != 7  # an error cell is a wrong answer: it never beats a right one
    # At twice the estimated speed nothing but the cheapest fits 20.5 ms: oracle and random follow the
    # current speed, static stays what it was chosen for the run.
    slow = b.choose(0, scale=2.0)
    assert slow["oracle"][2] == 0 and slow["random"][2] == 0 and slow["static"] == c["static"]
    assert Baselines(TEST, VAL, [20.5], seed=0, static_scale=2.0).choose(0, 1.0)["static"] == [0]
    assert b.choose(0, 1.0) == b.choose(0, 1.0)  # seeded per sample


def test_the_probe_baseline_takes_the_fitting_configuration_it_rates_highest():
    prob = torch.zeros(3, 8)
    prob[:, LABELS.index("low/k8/b16")] = 0.9  # 13 ms
    prob[:, LABELS.index("high/k4/b16")] = 0.95  # 21 ms
    b = Baselines(TEST, VAL, budgets=[9.0, 13.5, 20.5, 30.0], seed=0, probe=prob)
    assert b.choose(0, scale=1.0)["probe"] == [0, LABELS.index("low/k8/b16"), LABELS.index("low/k8/b16"),
                                               LABELS.index("high/k4/b16")]  # nothing fits 9 ms: the cheapest
    assert b.choose(0, scale=2.0)["probe"][3] == LABELS.index("low/k8/b16")  # at half speed only 26 ms fits 30
    assert "probe" not in Baselines(TEST, VAL, budgets=[20.0], seed=0).choose(0, 1.0)  # no probe, no column


def test_lookup_takes_the_best_val_configuration_for_the_budget_under_the_live_speed_and_overhead():
    # val accuracy: every low configuration 0.5, high/k4/b12 1.0, the other high ones 0.75
    b = Baselines(TEST, VAL, budgets=[9.0, 30.0, 31.9, 32.0, 35.0], seed=0)
    # at 1.5x the estimated time and 1 ms of controller overhead a budget buys (budget - 1) / 1.5 estimated ms:
    # 5.3 (nothing fits: the cheapest), 19.3 (only low ones fit: all 0.5, the first wins), 20.6 and 22.7
    # (high/k4/b12 at 20 ms fits); with 2 ms of overhead 31.9 buys 19.9 ms, below every high configuration
    assert b.choose(0, scale=1.5, overhead_ms=1.0)["lookup"] == [0, 0, 4, 4, 4]
    assert b.choose(0, scale=1.5, overhead_ms=2.0)["lookup"][2] == 0
    # it follows the machine while static stays what the calibration burst chose, and never the request
    assert b.choose(0, scale=1.0)["static"][3] == 4 and b.choose(0, scale=2.0)["lookup"][3] == 0
    assert b.choose(1, scale=1.5, overhead_ms=1.0)["lookup"] == b.choose(2, scale=1.5, overhead_ms=1.0)["lookup"]
