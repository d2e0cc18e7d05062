"""Each configuration's latency spread from a hand-made profile summary, draws within it, and the
chance of running over in closed form."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from knobctl.controller.reward import RewardWeights, combine, expected_reward_terms, reward
from knobctl.controller.spread import draw_latency, expected_overshoot, latency_spread, violation_probability
from knobctl.knobs import KnobConfig

A, B, C = KnobConfig("low", 4, 12), KnobConfig("high", 8, 16), KnobConfig("medium", 4, 12)


def summary() -> pd.DataFrame:
    return pd.DataFrame({
        "config": [A.label, A.label, A.label, B.label],
        "total_ms_p10": [8.0, 18.0, 9.0, 36.0],
        "total_ms_median": [10.0, 20.0, 10.0, 40.0],
        "total_ms_p90": [12.0, 30.0, 11.0, 44.0],
    })


def test_spread_is_the_median_ratio_over_a_configurations_cells():
    s = latency_spread(summary(), [A, B, C])
    # A's cells: p10 ratios 0.8, 0.9, 0.9 and p90 ratios 1.2, 1.5, 1.1; B's one cell 0.9 / 1.1
    assert s[0].tolist() == pytest.approx([0.9, 1.2])
    assert s[1].tolist() == pytest.approx([0.9, 1.1])
    assert s[2].tolist() == pytest.approx([0.9, 1.15])  # not profiled: the median over the profiled ones
    with pytest.raises(ValueError, match="dvc repro profile_latency"):
        latency_spread(summary().drop(columns="total_ms_p90"), [A])


def test_draws_are_uniform_between_the_configurations_ratios():
    lat = torch.full((4000,), 10.0)
    spread = torch.tensor([[0.8, 1.2]]).expand(4000, 2)
    drawn = draw_latency(lat, spread, torch.Generator().manual_seed(0))
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(drawn, 10.0 * (0.8 + 0.4 * u))  # one uniform per cell, in order
    assert drawn.min() >= 8.0 and drawn.max() <= 12.0 and abs(float(drawn.mean()) - 10.0) < 0.1
    # the share of draws over a budget is the closed-form chance
    p = violation_probability(torch.tensor(10.0), 11.0, torch.tensor([0.8, 1.2]))
    assert float(p) == pytest.approx(0.25) and abs(float((drawn > 11.0).float().mean()) - 0.25) < 0.03


def test_violation_probability_at_the_edges_and_without_spread():
    spread = torch.tensor([[0.8, 1.2], [0.8, 1.2], [0.8, 1.2], [1.0, 1.0], [1.0, 1.0]])
    lat = torch.tensor([10.0, 10.0, 10.0, 10.0, 10.0])
    budget = torch.tensor([7.0, 12.5, 10.0, 9.0, 10.0])
    assert violation_probability(lat, budget, spread).tolist() == pytest.approx([1.0, 0.0, 0.5, 1.0, 0.0])


def test_expected_overshoot_by_hand_and_against_draws():
    spread = torch.tensor([[0.8, 1.2]] * 4 + [[1.0, 1.0]])
    lat = torch.full((5,), 10.0)
    budget = torch.tensor([13.0, 11.0, 7.0, 10.0, 9.0])
    # 11 ms: 10 x (1.2 - 1.1)^2 / (2 x 0.4) = 0.125; 7 ms: mean 10 - 7 = 3; no spread: 10 - 9 = 1
    assert expected_overshoot(lat, budget, spread).tolist() == pytest.approx([0.0, 0.125, 3.0, 0.5, 1.0])
    drawn = draw_latency(torch.full((200_000,), 10.0), torch.tensor([0.8, 1.2]).expand(200_000, 2),
                         torch.Generator().manual_seed(0))
    assert float((drawn - 11.0).clamp(min=0).mean()) == pytest.approx(0.125, abs=0.005)


def test_the_expected_reward_is_the_mean_of_the_drawn_rewards():
    w = RewardWeights.from_params({"alpha": 1.0, "beta": 0.3, "gamma": 2.0, "delta": 0.5, "epsilon": -0.02})
    acc, lat, budget = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([10.0, 10.0, 12.0]), torch.tensor([11.0])
    spread, size = torch.tensor([[0.8, 1.2], [0.8, 1.2], [0.9, 1.1]]), torch.tensor([0.0, 0.5, 1.0])
    exact = combine(w, expected_reward_terms(acc, lat, budget, size, spread))  # [3]
    n = 200_000
    draws = draw_latency(lat.expand(n, 3), spread.expand(n, 3, 2), torch.Generator().manual_seed(1))  # [N, 3]
    sampled = reward(w, acc.expand(n, 3), draws, budget, size).mean(0)  # [3]
    assert torch.allclose(exact, sampled, atol=2e-3)
