"""The trade-off section on hand-made tables: sweeps, front, headroom, goals, the block-importance curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knobctl.controller.tables import CacheTables, complexity_of
from knobctl.controller.tradeoff import (
    TradeoffParams,
    crossed_types,
    goals,
    headline,
    importance_curve,
    knob_sweeps,
    pareto_front,
    tradeoff,
    type_costs,
)
from knobctl.knobs import KnobGrid

GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 16))
CONFIGS = tuple(GRID.configs())  # low/k4/b12, low/k4/b16, low/k8/b12, low/k8/b16, high/k4/b12, ...
# accuracy per configuration (grid order) and latency (ms): high tier +40 ms, top_k 8 +10, blocks 16 +20
ACC = [0.50, 0.60, 0.55, 0.70, 0.75, 0.85, 0.80, 0.90]
LAT = [40.0, 60.0, 50.0, 70.0, 80.0, 100.0, 90.0, 110.0]


def tables(n: int = 40) -> CacheTables:
    gen = torch.Generator().manual_seed(0)
    scores = (torch.rand(n, len(CONFIGS), generator=gen) < torch.tensor(ACC)).float()  # [S, C]
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["count"] * n),
                       configs=CONFIGS, tiers=("low", "high"), scores=scores,
                       latency_ms=torch.tensor(LAT).repeat(n, 1), language=torch.randn(n, 3, generator=gen),
                       vision=torch.randn(n, 2, 3, generator=gen), complexity=complexity_of(CONFIGS))


def exact() -> CacheTables:
    """20 samples whose scores average exactly to ACC."""
    n = 20
    scores = torch.zeros(n, len(CONFIGS))
    for j, a in enumerate(ACC):
        scores[: round(a * n), j] = 1.0
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=np.array(["count"] * n),
                       configs=CONFIGS, tiers=("low", "high"), scores=scores,
                       latency_ms=torch.tensor(LAT).repeat(n, 1), language=torch.zeros(n, 2),
                       vision=torch.zeros(n, 2, 2), complexity=complexity_of(CONFIGS))


def test_knob_sweeps_hold_the_other_knobs_at_their_maximum():
    s = knob_sweeps(exact())
    assert s["tier"] == [{"tier": "low", "config": "low/k8/b16", "accuracy": 70.0, "latency_ms": 70.0},
                         {"tier": "high", "config": "high/k8/b16", "accuracy": 90.0, "latency_ms": 110.0}]
    assert [r["config"] for r in s["top_k"]] == ["high/k4/b16", "high/k8/b16"]
    assert [(r["accuracy"], r["latency_ms"]) for r in s["num_blocks"]] == [(80.0, 90.0), (90.0, 110.0)]


def test_pareto_front_keeps_only_configurations_no_faster_one_beats():
    front = [r["config"] for r in pareto_front(exact())]
    # by latency: low/k4/b12 50%, low/k8/b12 55%, low/k4/b16 60%, low/k8/b16 70%, high/k4/b12 75%, ...
    assert front == ["low/k4/b12", "low/k8/b12", "low/k4/b16", "low/k8/b16", "high/k4/b12", "high/k8/b12",
                     "high/k4/b16", "high/k8/b16"]
    t = exact()
    t.scores[:, 2] = 0.0  # low/k8/b12 now worse than the faster low/k4/b12: off the front
    assert "low/k8/b12" not in [r["config"] for r in pareto_front(t)]


def test_goals_on_hand_made_ends_and_sweeps():
    t = tradeoff(exact(), torch.arange(10), torch.arange(10, 20), 4)
    ends = t["full_vs_smallest"]
    assert ends["full"] == "high/k8/b16" and ends["smallest"] == "low/k4/b12"
    assert ends["full_over_smallest_latency"] == pytest.approx(110 / 40, abs=1e-3)
    assert ends["accuracy_points_full_minus_smallest"] == pytest.approx(40.0)
    met = {g["goal"]: g for g in t["goals"]}
    assert met["latency full / smallest >= 1.8x"]["met"] is True
    assert met["tier alone changes latency by >= 15%"]["measured"] == pytest.approx(40 / 70, abs=1e-4)
    assert met["top_k at its lowest costs >= 2 points"]["measured"] == pytest.approx(5.0)
    assert met["num_blocks at its lowest costs >= 5 points"]["met"] is True
    crossing = "a question type pays >= 10 points for the low tier and <= 2 for the fewest blocks, another the reverse"
    assert met[crossing] == {"name": "crossed_needs", "goal": crossing, "measured": {"tier": [], "num_blocks": []},
                             "met": False}
    assert headline(t)["goals_measured"] == sum(g["met"] is not None for g in t["goals"])


def test_graded_blocks_goal_fails_when_the_first_block_costs_most_and_holds_on_a_slope():
    def sweeps(accs):
        return {"tier": [{"latency_ms": 1.0, "accuracy": 1.0}] * 2, "top_k": [{"latency_ms": 1.0, "accuracy": 1.0}] * 2,
                "num_blocks": [{"latency_ms": 1.0, "accuracy": a} for a in accs]}

    ends = {"full_over_smallest_latency": 1.0, "accuracy_points_full_minus_smallest": 0.0}
    graded = "each further dropped block costs at least as much as the previous"
    # the first dropped block costs the most (6 points), the next two 2 each: not graded
    steep = {g["goal"]: g for g in goals(ends, sweeps([80.0, 82.0, 84.0, 90.0]), [], None)}[graded]
    slope = {g["goal"]: g for g in goals(ends, sweeps([70.0, 80.0, 86.0, 90.0]), [], None)}[graded]
    assert steep["met"] is False and steep["measured"] == [6.0, 2.0, 2.0]
    assert slope["met"] is True and slope["measured"] == [4.0, 6.0, 10.0]
    kept = "the fewest blocks keep >= 50% of the full accuracy (no drop to chance)"
    assert {g["goal"]: g for g in goals(ends, sweeps([70.0, 80.0, 86.0, 90.0]), [], None)}[kept]["met"] is True
    cliff = {g["goal"]: g for g in goals(ends, sweeps([40.0, 80.0, 86.0, 90.0]), [], None)}[kept]
    assert cliff["met"] is False and cliff["measured"] == pytest.approx(40 / 90, abs=1e-4)


def crossed() -> CacheTables:
    """Two question types with crossed needs: "read" is right only at the high tier, "recall" only with 16 blocks;
    the budget that fits high/k8/b12 (90 ms) or low/k8/b16 (70 ms) but not high/k8/b16 (110 ms) lets a per-type
    choice answer both, where any one configuration answers one of them."""
    n = 40
    types = np.array(["read", "recall"] * (n // 2))
    high = torch.tensor([k.tier == "high" for k in CONFIGS], dtype=torch.float32)  # [C]
    deep = torch.tensor([k.num_blocks == 16 for k in CONFIGS], dtype=torch.float32)  # [C]
    is_read = torch.from_numpy(types == "read")[:, None]  # [S, 1]
    scores = torch.where(is_read, high[None], deep[None])  # [S, C]
    lang = torch.stack([is_read[:, 0].float(), 1 - is_read[:, 0].float()], 1)  # [S, 2]: the question tells the type
    return CacheTables(sample_ids=np.array([f"s{i}" for i in range(n)]), question_types=types, configs=CONFIGS,
                       tiers=("low", "high"), scores=scores, latency_ms=torch.tensor(LAT).repeat(n, 1),
                       language=lang, vision=torch.zeros(n, 2, 2), complexity=complexity_of(CONFIGS))


def test_type_costs_and_crossed_needs():
    t = type_costs(crossed())
    assert t["read"]["knobs"]["tier"] == {"low": 0.0, "high": 100.0} and t["read"]["cost"] == {
        "tier": 100.0, "top_k": 0.0, "num_blocks": 0.0}
    assert t["recall"]["cost"] == {"tier": 0.0, "top_k": 0.0, "num_blocks": 100.0}
    assert t["recall"]["smallest"] == 0.0 and t["read"]["full"] == 100.0 and t["read"]["n"] == 20
    assert crossed_types(t) == {"tier": ["read"], "num_blocks": ["recall"]}
    assert crossed_types({"both": {"cost": {"tier": 30.0, "num_blocks": 30.0}}}) == {"tier": [], "num_blocks": []}


def test_crossed_needs_make_headroom_for_the_probe():
    """At a budget where high/k8/b12 (90 ms) and low/k8/b16 (70 ms) fit but no high-tier 16-block configuration
    (100 ms and more), the best static answers half the questions and the probe, which reads the type from the
    question, answers them all; once high/k4/b16 fits, static answers all too."""
    t = tradeoff(crossed(), torch.arange(20), torch.arange(20, 40), 8)
    rows = t["headroom"]
    mid = [r for r in rows if r["static_config"] is not None and 90 <= r["budget_ms"] < 100]
    assert mid and all(r["static_accuracy"] == 50.0 and r["probe_gain"] == 50.0 for r in mid)
    assert all(r["probe_gain"] == 0.0 for r in rows if r["budget_ms"] >= 100)
    choice = [r["probe_gain"] for r in rows if 0.2 <= r["fit_share"] <= 0.8]
    assert headline(t)["probe_headroom_points"] == pytest.approx(sum(choice) / len(choice), abs=0.01)
    goal = {g["goal"]: g for g in t["goals"]}
    assert goal["a question type pays >= 10 points for the low tier and <= 2 for the fewest blocks, another the "
                "reverse"]["met"] is True


def test_headroom_oracle_bounds_static_and_probe():
    t = tables(200)
    rows = tradeoff(t, torch.arange(120), torch.arange(120, 200), 5)["headroom"]
    with_static = [r for r in rows if r["static_config"] is not None]
    assert with_static and all(r["oracle_gain"] >= 0 and r["oracle_gain"] >= r["probe_gain"] for r in with_static)
    assert rows[0]["fit_share"] == pytest.approx(1 / 8) and rows[-1]["fit_share"] == 1.0


def test_importance_curve_costs_in_percent_of_full():
    imp = {"order": [0, 2, 1, 3], "rank_by": "loglik", "full": {"accuracy": 0.8}, "agreement_spearman": 0.9,
           "per_block": [{"block": 0, "accuracy_cost_pct": 75.0}, {"block": 1, "accuracy_cost_pct": 12.5}],
           "curve": [{"num_blocks": 2, "accuracy_cost_pct": 25.0}, {"num_blocks": 4, "accuracy_cost_pct": 0.0},
                     {"num_blocks": 3, "accuracy_cost_pct": 5.0}]}
    c = importance_curve(imp)
    assert c["accuracy_cost_pct"] == {"0": 0.0, "1": 5.0, "2": 25.0} and c["block0_accuracy_cost_pct"] == 75.0


def test_params():
    assert TradeoffParams.from_params({}) == TradeoffParams()
    with pytest.raises(ValueError, match="tradeoff.eval_fraction"):
        TradeoffParams(eval_fraction=1.0)
