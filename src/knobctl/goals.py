"""The project's goals as data: each a name, what it asks, a threshold and how a measured value is compared.

Three groups, each read by the module that measures it:

* :data:`TRADEOFF_GOALS`: what a faithful miniature of a pretrained MoE VLM must show on the cached tables
  (:mod:`knobctl.controller.tradeoff`): latency each knob buys, accuracy each knob costs, two question types whose
  needs cross, the supervised probe's headroom over one configuration per budget;
* :data:`TRAIN_GOALS`: the controller on held-out samples with estimated latency
  (:mod:`knobctl.controller.evaluation`);
* :data:`VALIDATE_GOALS`: the controller on the real model with real clocks (:mod:`knobctl.validate.summary`).

A goal is met when its measured value compares to the threshold as ``comparison`` says, within a float
tolerance; a value that could not be measured (None) leaves the goal unmeasured, never met or missed. A
``reference`` goal sets a measured figure beside a published one and is never tested. Every accuracy threshold
is in the unit its metrics use: points (0..100) in the trade-off, a share (0..1) in train and validate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from knobctl.intervals import NOT_BELOW

#: Configurations fitting a budget (share of the grid) where a choice exists for the trade-off's probe goal:
#: at fewer only the cheapest fit, at more nearly everything does and one configuration answers all.
CHOICE_FIT_RANGE = (0.2, 0.8)
#: Float sums of equal accuracies differ in the last bits; a goal is judged that far on the generous side.
TOLERANCE = 1e-9
COMPARISONS = (">=", "<=", "reference")


@dataclass(frozen=True)
class Goal:
    """One goal: ``name`` (stable key), ``description`` (what the report prints), ``threshold``, ``comparison``
    (one of :data:`COMPARISONS`) and, where a goal has a second limit, ``bound``."""

    name: str
    description: str
    threshold: float
    comparison: str
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(f"goal {self.name}: comparison {self.comparison!r}; allowed: {', '.join(COMPARISONS)}")

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the goal; None where it is unmeasured or the goal is a reference."""
        if value is None or self.comparison == "reference" or math.isnan(value):  # NaN: not measured
            return None
        if self.comparison == ">=":
            return bool(value >= self.threshold - TOLERANCE)
        return bool(value <= self.threshold + TOLERANCE)

    def result(self, measured: Any, value: Any = ..., met: bool | None = None) -> dict[str, Any]:
        """The goal's row in a metrics or report file: its name, description, what was measured, and whether it
        is met: ``met`` where the caller judged it, else :meth:`met` of ``value`` (the figure tested, where the
        one shown is a list or a mapping), else of ``measured``."""
        if met is None:
            met = self.met(measured if value is ... else value)
        return {"name": self.name, "goal": self.description, "measured": measured, "met": met}


def _goal(name: str, text: str, threshold: float, comparison: str = ">=", bound: float | None = None) -> Goal:
    """A goal whose description is ``text`` with its numbers filled in from the threshold, so the two never
    disagree: ``{t}`` the threshold, ``{pts}`` a share threshold in points (``{below}`` its negative), ``{b}``
    the bound."""
    return Goal(name, text.format(t=threshold, pts=100 * threshold, below=-100 * threshold, b=bound), threshold,
                comparison, bound)


_NOT_BELOW = f"paired 95% interval's low end >= {100 * NOT_BELOW:g} points"
_LOW, _HIGH = (f"{100 * x:.0f}" for x in CHOICE_FIT_RANGE)

TRADEOFF_GOALS: tuple[Goal, ...] = (
    _goal("latency_full_over_smallest", "latency full / smallest >= {t}x", 1.8),
    _goal("latency_spread_tier", "tier alone changes latency by >= {t:.0%}", 0.15),
    _goal("latency_spread_num_blocks", "num_blocks alone changes latency by >= {t:.0%}", 0.15),
    _goal("latency_spread_top_k", "top_k alone changes latency by >= {t:.0%}", 0.05),
    _goal("accuracy_full_minus_smallest", "accuracy full - smallest >= {t:g} points", 15.0),
    _goal("accuracy_cost_tier", "tier at its lowest costs >= {t:g} points", 5.0),
    _goal("accuracy_cost_top_k", "top_k at its lowest costs >= {t:g} points", 2.0),
    _goal("accuracy_cost_num_blocks", "num_blocks at its lowest costs >= {t:g} points", 5.0),
    # Measured as the smallest increase from one dropped block's cost to the next (points): a small model's
    # blocks should grade as MolmoE-1B's do (3.1 / 5.4 / 7.5 / 18.4% for 1..4 dropped), not collapse at once.
    _goal("blocks_graded", "each further dropped block costs at least as much as the previous", 0.0),
    # MolmoE-1B keeps 82% of its accuracy with 4 of 16 blocks dropped; the miniature must not drop to chance.
    _goal("fewest_blocks_keep", "the fewest blocks keep >= {t:.0%} of the full accuracy (no drop to chance)", 0.5),
    # Where one type needs resolution and not depth and another the reverse, a per-request choice beats any one
    # configuration per budget: the threshold is what a type pays for the resource it needs, the bound for the other.
    _goal("crossed_needs", "a question type pays >= {t:g} points for the low tier and <= {b:g} for the fewest "
          "blocks, another the reverse", 10.0, bound=2.0),
    _goal("probe_headroom", "probe beats best static by >= {t:g} points where " + f"{_LOW}-{_HIGH}% of "
          "configurations fit", 3.0),
    _goal("block_rank_agreement", "block importance ranks agree across calibration halves (MolmoE-1B: Spearman {t})",
          0.85, "reference"),
)

TRAIN_GOALS: tuple[Goal, ...] = (
    # measured as the share of budgets (with a static configuration) where the controller is not below it
    _goal("train_not_below_static", f"at or above best static at every budget ({_NOT_BELOW})", 1.0),
    _goal("train_gain_where_choice", "mean gain over best static >= {pts:g} points where some but not all "
          "configurations fit", 0.02),
    _goal("train_gap_closed", ">= {t:.0%} of the static-to-oracle gap closed there", 0.3),
    _goal("train_probe_distance", "within {pts:g} point of the supervised probe there", 0.01, "<="),
)

VALIDATE_GOALS: tuple[Goal, ...] = (
    # the "every budget" goals are measured as the share of budgets that pass
    _goal("validate_not_below_lookup", f"accuracy within budget not below lookup at every budget ({_NOT_BELOW})", 1.0),
    _goal("validate_gain_over_lookup", "mean accuracy within budget over lookup >= {pts:g} points (point estimate; "
          "95% interval beside it)", 0.02),
    _goal("validate_above_random", "accuracy within budget above random feasible at every budget where a choice "
          "exists (interval above 0)", 1.0),
    _goal("validate_violations", "violation rate <= {t:.0%} at every budget the cheapest configuration meets at its "
          "own p95", 0.05, "<="),
    _goal("validate_overhead", "controller overhead <= {t:.0%} of mean latency", 0.02, "<="),
    # On accuracy alone a static configuration that runs over its budget can look better than the controller;
    # this is how far the controller may trail it at any budget (measured: its worst gain over static).
    _goal("validate_static_slack", "accuracy alone at most {below:g} point below static at every budget", -0.01),
)

GOALS: tuple[Goal, ...] = TRADEOFF_GOALS + TRAIN_GOALS + VALIDATE_GOALS


def goal(name: str) -> Goal:
    """The goal called ``name``."""
    for g in GOALS:
        if g.name == name:
            return g
    raise KeyError(f"no goal {name!r}; goals: {', '.join(g.name for g in GOALS)}")


def share(count: int, total: int) -> float | None:
    """``count`` of ``total`` budgets as a share; None where there is no budget to count."""
    return count / total if total else None


def tally(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many of the goal rows are met, of those measured (a reference or unmeasured goal counts in neither)."""
    measured = [r["met"] for r in results if r["met"] is not None]
    return {"goals_met": sum(measured), "goals_measured": len(measured)}
