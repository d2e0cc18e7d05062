"""The report renders every goal, per-budget row and plot from the metrics."""

from __future__ import annotations

from knobctl.controller.evaluation import train_goal_results
from knobctl.validate.report import render
from knobctl.validate.summary import summarize
from tests.conftest import validation_frames


def metrics() -> dict:
    req, chosen = validation_frames()
    return summarize(req, chosen, (10.0, 20.0), (1.2, 0.8))


def test_report_states_each_goal_and_whether_it_is_met():
    text = render(metrics())
    lines = text.splitlines()
    goal = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "|" in line}
    fair = "violation rate <= 5% at every budget the cheapest configuration meets at its own p95"
    assert goal[fair].endswith("| worst 50.0% over 2 budgets (lookup: 100.0%) | **no** |")
    lookup = "accuracy within budget not below lookup at every budget (paired 95% interval's low end >= -0.5 points)"
    assert goal[lookup].endswith("| 1 of 2 budgets | **no** |")
    mean = "mean accuracy within budget over lookup >= 2 points (point estimate; 95% interval beside it)"
    assert goal[mean].endswith("| +25.00 points [+0.00 points, +50.00 points] | yes |")
    rand = "accuracy within budget above random feasible at every budget where a choice exists (interval above 0)"
    assert goal[rand].endswith("| 0 of 1 budgets | **no** |")
    assert goal["controller overhead <= 2% of mean latency"].endswith("| 1.00 ms = 6.9% | **no** |")
    assert goal["accuracy alone at most 1 point below static at every budget"].endswith(
        "| worst +0.00 points over 2 budgets | yes |")
    h = {"budgets_at_least_static": 7, "budgets_above_static": 2, "budgets_with_static": 7,
         "mean_gain_over_static": 0.0011, "budgets_not_below_static": 6, "budgets_with_choice": 4,
         "mean_gain_where_choice": 0.025, "gap_closed_where_choice": 0.31, "probe_minus_controller_where_choice": 0.012,
         "probe_gain_where_choice": 0.037, "mean_slow_rate": 0.08}
    train = render(metrics(), train={"steps": 3000, "train_seconds": 28.4, "rollouts_per_s": 68759, "headline": h,
                                     "goals": train_goal_results(h)})
    assert "| 6 of 7 budgets | **no** |" in train and "| +2.50 points over 4 budgets | yes |" in train
    assert "| 31.0% | yes |" in train and "| probe - controller +1.20 points (probe over static +3.70 points) | **no** |" \
        in train
    # a goal that could not be measured is neither met nor missed
    unmeasured = render(metrics(), train={"steps": 1, "train_seconds": 1.0, "rollouts_per_s": 1, "headline": {
        **h, "mean_gain_where_choice": None}, "goals": train_goal_results({**h, "mean_gain_where_choice": None})})
    assert "| - over 4 budgets | - |" in unmeasured

def test_report_has_a_row_per_budget_with_units_and_embeds_the_plots():
    text = render(metrics(), train={"steps": 3000, "train_seconds": 28.4, "rollouts_per_s": 68759,
                                    "headline": {"budgets_at_least_static": 7, "budgets_above_static": 2,
                                                 "budgets_with_static": 7, "mean_gain_over_static": 0.0011}},
                  table={"headline": {"full_accuracy": 0.949, "smallest_accuracy": 0.847, "oracle_accuracy": 0.982,
                                      "best_static_accuracy": 0.95}, "best_static": {"config": "high/k7/b16"},
                         "model": {"family": "llava", "name": "Llava + OLMoE", "top_k_weights": "not renormalised"}},
                  estimator={"headline": {"configs_total_mape": 0.077, "configs_total_within_10pct": 0.8}})
    # ... static, its accuracy and violations, then lookup, probe, full, smallest, random, oracle
    assert ("| 10.0 | 50.0% | 50.0% | 10.5 / 11.8 | low/k4/b12 | 50.0% | 0.0% | 50.0% | 50.0% | 100.0% | 50.0% | "
            "50.0% | 50.0% |") in text
    # against lookup: fit share, controller and lookup within budget, gain, interval, violations, random
    assert "| 10.0 | 50.0% | 0.0% | 50.0% | -50.0 | [-100.0, +0.0] | 50.0% | 0.0% | 50.0% | -50.0 [-100.0, +0.0] |" \
        in text
    assert "| 20.0 | 100.0% | 0.0% | 18.5 / 18.9 | low/k4/b12 | 50.0% |" in text
    assert "budget (ms)" in text and "mean / p95 (ms)" in text
    assert "(the oracle's premise) | 1 of 8 |" in text
    assert "controller at least static at 1 of 2 budgets, mean gain +0.00 points" in text
    assert "| 10.0 | 0.0% | 50.0% | 50.0% | 50.0% | 0.0% | 50.0% | 50.0% | 50.0% |" in text  # controller ... best_measured
    assert "| cached rollouts per second | 68,759 |" in text and "| best static (high/k7/b16) | 95.0% |" in text
    assert "held-out configurations: MAPE 7.7%, 80.0% within +-10%" in text
    assert "Model family: Llava + OLMoE (`llava`). Its routers' kept expert weights: not renormalised." in text
    for name in ("accuracy", "latency", "choices", "pareto"):
        assert f"(../plots/validate/{name}.png)" in text
    assert render(metrics()) == render(metrics())  # no clock, no randomness
