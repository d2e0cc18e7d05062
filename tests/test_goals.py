"""The goals as data: unique names, descriptions that say their thresholds, comparisons judged with a tolerance."""

from __future__ import annotations

import math

import pytest

from knobctl.goals import GOALS, TOLERANCE, TRADEOFF_GOALS, Goal, goal, share, tally


def test_names_are_unique_and_every_goal_is_found_by_name():
    assert len({g.name for g in GOALS}) == len(GOALS)
    assert all(goal(g.name) is g for g in GOALS)
    with pytest.raises(KeyError, match="no goal 'nope'"):
        goal("nope")


def test_descriptions_carry_their_thresholds():
    assert goal("latency_full_over_smallest").description == "latency full / smallest >= 1.8x"
    assert goal("latency_spread_top_k").description == "top_k alone changes latency by >= 5%"
    assert goal("train_gain_where_choice").description.startswith("mean gain over best static >= 2 points")
    assert goal("validate_violations").description.startswith("violation rate <= 5% ")
    assert "-0.5 points" in goal("validate_not_below_lookup").description
    assert "20-80%" in goal("probe_headroom").description
    assert TRADEOFF_GOALS[0].name == "latency_full_over_smallest"


def test_a_goal_is_met_within_the_tolerance_and_unmeasured_without_a_value():
    at_least, at_most = Goal("a", "a", 1.8, ">="), Goal("b", "b", 0.05, "<=")
    assert at_least.met(1.8) and at_least.met(1.8 - TOLERANCE / 2) and not at_least.met(1.79)
    assert at_most.met(0.05) and not at_most.met(0.06)
    assert at_least.met(None) is None and at_least.met(math.nan) is None
    assert goal("block_rank_agreement").met(0.99) is None  # a reference is never tested
    with pytest.raises(ValueError, match="comparison '>'"):
        Goal("c", "c", 1.0, ">")


def test_results_and_their_tally():
    g = Goal("a", "a", 2.0, ">=")
    rows = [g.result(3.0), g.result([1, 2], value=1.0), g.result({"x": []}, met=True), g.result(None)]
    assert [r["met"] for r in rows] == [True, False, True, None]
    assert rows[1] == {"name": "a", "goal": "a", "measured": [1, 2], "met": False}
    assert tally(rows) == {"goals_met": 2, "goals_measured": 3}
    assert share(3, 4) == 0.75 and share(0, 0) is None
