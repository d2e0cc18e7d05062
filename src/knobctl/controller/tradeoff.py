"""The trade-off a model offers a controller, from the cached tables (accuracy table x latency estimator).

What a researcher checks before training a controller: does each knob buy time, does it cost
accuracy, and is there per-request headroom over the best static configuration? Computed on
the table's samples with the estimator's latency (no clock is read here):

* per knob setting, the others at their maximum: accuracy (mean VQA score) and the median
  estimated latency over samples; the same accuracy per question type, with what each knob's lowest
  setting costs that type (a type that pays for the tier but not for depth, beside one that pays the
  reverse, is where a per-request choice beats one configuration per budget);
* the full configuration against the smallest (lowest tier, top_k and blocks);
* the static Pareto front: configurations no other configuration beats on both accuracy and
  median latency;
* per budget (``budgets_between`` on the training samples, as train_controller's evaluation):
  the share of configurations that fit, the best static configuration, and on the held-out
  samples the oracle's and the supervised probe's gain over it (:mod:`knobctl.controller.probe`);
* the block-importance curve (block_importance's output) beside MolmoE-1B's published figures;
* the goals a faithful miniature of a pretrained MoE VLM meets (the thresholds below), each met or not.

Every accuracy is in points (0..100) and every latency in ms, so the JSON reads as a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from knobctl.controller.evaluation import FIT_SHARE, best_static, mean_accuracy
from knobctl.controller.probe import L2, fit_probe, probe_choices
from knobctl.controller.tables import CacheTables, budgets_between
from knobctl.io import round4
from knobctl.knobs import KnobConfig
from knobctl.params import build, require, require_int

#: MolmoE-1B with the knobs applied at inference (published; COCO-2014 VQA, H100): what the default mimics.
MOLMOE_1B = {
    "best_accuracy": 0.826, "best_latency_ms": 294.7, "cheapest_accuracy": 0.654, "cheapest_latency_ms": 166.5,
    "full_over_cheapest_latency": round(294.7 / 166.5, 2),
    "blocks_dropped_accuracy_cost_pct": {"1": 3.1, "2": 5.4, "3": 7.5, "4": 18.4},
    "block0_accuracy_cost_pct": 62.7, "importance_rank_agreement_spearman": 0.85,
}
MIN_KEPT = 0.5  # share of the full configuration's accuracy the fewest blocks must keep
HEADROOM_FIT_RANGE = (0.2, 0.8)  # budgets where some but not all configurations fit: where a choice exists


@dataclass(frozen=True)
class TradeoffParams:
    """The ``tradeoff:`` section of params.yaml."""

    num_budgets: int = 8
    eval_fraction: float = 0.2
    probe_l2: float = 100.0
    num_threads: int = 1

    def __post_init__(self) -> None:
        require_int(self.num_budgets, "tradeoff.num_budgets", 2)
        require(0 < self.eval_fraction < 1, "tradeoff.eval_fraction", self.eval_fraction,
                "use a fraction strictly between 0 and 1 (held-out samples the probe and oracle are scored on)")
        require(self.probe_l2 > 0, "tradeoff.probe_l2", self.probe_l2, "use a positive penalty such as 100")
        require_int(self.num_threads, "tradeoff.num_threads", 0)

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TradeoffParams:
        return build(cls, section, "tradeoff")


def _pts(x: float | torch.Tensor) -> float:
    return round(float(x) * 100, 2)


@dataclass(frozen=True)
class PerConfig:
    """Each configuration's mean accuracy and median estimated latency over the table's samples."""

    accuracy: torch.Tensor  # [C] 0..1
    latency_ms: torch.Tensor  # [C]

    @classmethod
    def of(cls, tables: CacheTables) -> PerConfig:
        return cls(mean_accuracy(tables.scores), tables.latency_ms.median(0).values)

    def row(self, j: int) -> dict[str, float]:
        return {"accuracy": _pts(self.accuracy[j]), "latency_ms": round(float(self.latency_ms[j]), 2)}


def _size(tables: CacheTables, k: KnobConfig) -> tuple[int, int, int]:
    """Order by tier, then top_k, then blocks: max is the full configuration, min the smallest."""
    return tables.tiers.index(k.tier), k.top_k, k.num_blocks


def knob_sweeps(tables: CacheTables, per: PerConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """Accuracy and median latency of each setting of each knob, the other knobs at their maximum."""
    per = per or PerConfig.of(tables)
    col = {k: j for j, k in enumerate(tables.configs)}
    full = max(tables.configs, key=lambda k: _size(tables, k))
    out: dict[str, list[dict[str, Any]]] = {}
    for knob in ("tier", "top_k", "num_blocks"):
        values = sorted({getattr(k, knob) for k in tables.configs},
                        key=lambda v: tables.tiers.index(v) if knob == "tier" else v)
        rows = []
        for v in values:
            k = KnobConfig(**{**full.__dict__, knob: v})
            if k in col:
                rows.append({knob: v, "config": k.label, **per.row(col[k])})
        out[knob] = rows
    return out


def type_costs(tables: CacheTables) -> dict[str, dict[str, Any]]:
    """Per question type: its questions, accuracy at the full and the smallest configuration, and at each setting
    of each knob with the other knobs at their maximum (``knobs``: knob -> setting -> points), plus what the lowest
    setting of each knob costs against full (``cost``: knob -> points). Where two types' costs cross (one pays for
    the tier and not for depth, the other the reverse) a per-request choice has room (module docstring)."""
    col = {k: j for j, k in enumerate(tables.configs)}
    full = max(tables.configs, key=lambda k: _size(tables, k))
    smallest = min(tables.configs, key=lambda k: _size(tables, k))
    out: dict[str, dict[str, Any]] = {}
    for qtype in sorted(set(tables.question_types.tolist())):
        acc = mean_accuracy(tables.scores[torch.from_numpy(tables.question_types == qtype)])  # [C]
        sweeps: dict[str, dict[str, float]] = {}
        for knob in ("tier", "top_k", "num_blocks"):
            values = sorted({getattr(k, knob) for k in tables.configs},
                            key=lambda v: tables.tiers.index(v) if knob == "tier" else v)
            sweeps[knob] = {str(v): _pts(acc[col[k]]) for v in values
                            if (k := KnobConfig(**{**full.__dict__, knob: v})) in col}
        out[str(qtype)] = {"n": int((tables.question_types == qtype).sum()), "full": _pts(acc[col[full]]),
                           "smallest": _pts(acc[col[smallest]]), "knobs": sweeps,
                           "cost": {knob: round(_pts(acc[col[full]]) - next(iter(v.values())), 2)
                                    for knob, v in sweeps.items() if len(v) > 1}}
    return out


def pareto_front(tables: CacheTables, per: PerConfig | None = None) -> list[dict[str, Any]]:
    """Configurations on the static front, fastest first: each is more accurate than every faster one."""
    per = per or PerConfig.of(tables)
    acc, lat = per.accuracy, per.latency_ms  # [C], [C]
    front, best = [], -1.0
    for j in sorted(range(len(tables.configs)), key=lambda j: (float(lat[j]), -float(acc[j]))):
        if float(acc[j]) > best:
            best = float(acc[j])
            front.append({"config": tables.configs[j].label, **per.row(j)})
    return front


def headroom(tables: CacheTables, train_idx: torch.Tensor, eval_idx: torch.Tensor,
             budgets: Sequence[float], probe_l2: float = L2) -> list[dict[str, Any]]:
    """Per budget: share of configurations fitting (for >= FIT_SHARE of the training samples), best
    static configuration (chosen on training samples), and the oracle's and probe's held-out gain over it."""
    train_acc = mean_accuracy(tables.scores[train_idx])  # [C]
    prob = fit_probe(tables, train_idx, probe_l2)[eval_idx]  # [E, C]
    acc = torch.nan_to_num(tables.scores[eval_idx], nan=0.0)  # [E, C]
    lat = tables.latency_ms[eval_idx]  # [E, C]
    rows_e = torch.arange(len(eval_idx))
    rows = []
    for b in budgets:
        fit_share = float(((tables.latency_ms[train_idx] <= b).float().mean(0) >= FIT_SHARE).float().mean())
        static = best_static(tables.latency_ms[train_idx], train_acc, b)
        row: dict[str, Any] = {"budget_ms": b, "fit_share": round4(fit_share), "static_config": None,
                               "static_accuracy": None, "oracle_gain": None, "probe_gain": None}
        if static is not None:
            s_acc = acc[:, static].mean()
            oracle = torch.where(lat <= b, acc, torch.tensor(0.0)).max(1).values.mean()
            probe = acc[rows_e, probe_choices(prob, lat, b, tables.complexity)].mean()
            row.update(static_config=tables.configs[static].label, static_accuracy=_pts(s_acc),
                       oracle_gain=_pts(oracle - s_acc), probe_gain=_pts(probe - s_acc))
        rows.append(row)
    return rows


def tradeoff(tables: CacheTables, train_idx: torch.Tensor, eval_idx: torch.Tensor, num_budgets: int,
             importance: Mapping[str, Any] | None = None, probe_l2: float = L2) -> dict[str, Any]:
    """The whole trade-off section (module docstring) as one JSON-ready dict."""
    per = PerConfig.of(tables)
    sweeps = knob_sweeps(tables, per)
    acc, lat = per.accuracy, per.latency_ms  # [C], [C]
    full = max(range(len(tables.configs)), key=lambda j: _size(tables, tables.configs[j]))
    # the grid's smallest configuration (lowest tier, top_k and blocks), as MolmoE-1B's "cheapest" is
    smallest = min(range(len(tables.configs)), key=lambda j: _size(tables, tables.configs[j]))
    ends = {"full": tables.configs[full].label, "full_accuracy": _pts(acc[full]),
            "full_latency_ms": round(float(lat[full]), 2), "smallest": tables.configs[smallest].label,
            "smallest_accuracy": _pts(acc[smallest]), "smallest_latency_ms": round(float(lat[smallest]), 2),
            "full_over_smallest_latency": round(float(lat[full] / lat[smallest]), 3),
            "accuracy_points_full_minus_smallest": round(_pts(acc[full]) - _pts(acc[smallest]), 2)}
    budgets = budgets_between(tables.latency_ms[train_idx], num_budgets)
    room = headroom(tables, train_idx, eval_idx, budgets, probe_l2)
    curve = importance_curve(importance) if importance else None
    types = type_costs(tables)
    return {"full_vs_smallest": ends, "knobs": sweeps, "types": types, "pareto_front": pareto_front(tables, per),
            "headroom": room, "block_importance": curve, "molmoe_1b": MOLMOE_1B,
            "goals": goals(ends, sweeps, room, curve, types), "samples": len(tables.sample_ids),
            "eval_samples": len(eval_idx)}


def importance_curve(importance: Mapping[str, Any]) -> dict[str, Any]:
    """block_importance's cumulative curve as accuracy cost in % per blocks dropped, and block 0's cost
    (the file's own figures, :mod:`knobctl.base.importance`)."""
    per_block = {int(b["block"]): b for b in importance["per_block"]}
    curve = sorted(importance["curve"], key=lambda r: -r["num_blocks"])
    n = max(r["num_blocks"] for r in curve) if curve else 0
    return {"order": list(importance["order"]), "rank_by": importance.get("rank_by"),
            "accuracy_cost_pct": {str(n - r["num_blocks"]): r["accuracy_cost_pct"] for r in curve},
            "block0_accuracy_cost_pct": per_block[0]["accuracy_cost_pct"] if 0 in per_block else None,
            "agreement_spearman": importance.get("agreement_spearman")}


def _spread(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    """Relative change of ``key`` from the lowest setting to the highest (0.1 = 10%)."""
    lo, hi = rows[0][key], rows[-1][key]
    return (hi - lo) / lo if lo else float("nan")


#: What a faithful miniature of a pretrained MoE VLM must show (README.md, "The default model"): latency each knob
#: buys (relative), accuracy each knob's lowest setting costs (points), the crossing of two question types' needs
#: (points: one type pays >= CROSS_COST for the low tier and <= CROSS_FREE for the fewest blocks, another the
#: reverse) and the probe's headroom (points).
LATENCY_FULL_OVER_SMALLEST = 1.8
LATENCY_SPREAD = {"tier": 0.15, "num_blocks": 0.15, "top_k": 0.05}
ACCURACY_FULL_MINUS_SMALLEST = 15.0
ACCURACY_COST = {"tier": 5.0, "top_k": 2.0, "num_blocks": 5.0}
CROSS_COST, CROSS_FREE = 10.0, 2.0
PROBE_HEADROOM = 3.0


def probe_headroom(room: Sequence[Mapping[str, Any]]) -> float | None:
    """The probe's mean gain over the best static configuration (points) at the budgets where a choice exists:
    HEADROOM_FIT_RANGE of the configurations fit. None where no budget is in that range."""
    mid = [r["probe_gain"] for r in room
           if r["probe_gain"] is not None and HEADROOM_FIT_RANGE[0] <= r["fit_share"] <= HEADROOM_FIT_RANGE[1]]
    return round(float(np.mean(mid)), 2) if mid else None


def crossed_types(types: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Question types that pay for one resource and not the other: ``tier`` (the low tier costs >= CROSS_COST
    points and the fewest blocks <= CROSS_FREE) and ``num_blocks`` (the reverse)."""
    out: dict[str, list[str]] = {"tier": [], "num_blocks": []}
    for name, t in types.items():
        cost = t["cost"]
        if "tier" not in cost or "num_blocks" not in cost:
            continue
        for need, spare in (("tier", "num_blocks"), ("num_blocks", "tier")):
            if cost[need] >= CROSS_COST and cost[spare] <= CROSS_FREE:
                out[need].append(name)
    return out


def goals(ends: Mapping[str, Any], sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
          room: Sequence[Mapping[str, Any]], curve: Mapping[str, Any] | None,
          types: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The default model's trade-off goals (the thresholds above), each with its measured value and whether it is
    met."""
    out = []

    def add(goal: str, value: Any, met: bool | None) -> None:
        out.append({"goal": goal, "measured": value, "met": met})

    ratio = ends["full_over_smallest_latency"]
    add(f"latency full / smallest >= {LATENCY_FULL_OVER_SMALLEST}x", ratio, ratio >= LATENCY_FULL_OVER_SMALLEST)
    for knob, need in LATENCY_SPREAD.items():
        s = _spread(sweeps[knob], "latency_ms") if len(sweeps[knob]) > 1 else float("nan")
        add(f"{knob} alone changes latency by >= {need:.0%}", round(s, 4), bool(s >= need))
    gap = ends["accuracy_points_full_minus_smallest"]
    add(f"accuracy full - smallest >= {ACCURACY_FULL_MINUS_SMALLEST:g} points", gap, gap >= ACCURACY_FULL_MINUS_SMALLEST)
    for knob, need in ACCURACY_COST.items():
        rows = sweeps[knob]
        cost = round(rows[-1]["accuracy"] - rows[0]["accuracy"], 2) if len(rows) > 1 else float("nan")
        add(f"{knob} at its lowest costs >= {need:g} points", cost, bool(cost >= need))
    blocks = [r["accuracy"] for r in reversed(sweeps["num_blocks"])]  # full first
    steps = np.diff([0.0, *[blocks[0] - a for a in blocks[1:]]]) if len(blocks) > 1 else np.array([])
    add("each further dropped block costs at least as much as the previous",
        [round(float(s), 2) for s in steps], bool(len(steps) and np.all(np.diff(steps) >= -1e-9)))
    # MolmoE-1B keeps 82% of its accuracy with 4 of 16 blocks dropped; the tiny model must not collapse either.
    kept = round(blocks[-1] / blocks[0], 4) if len(blocks) > 1 and blocks[0] > 0 else float("nan")
    add(f"the fewest blocks keep >= {MIN_KEPT:.0%} of the full accuracy (no drop to chance)", kept,
        bool(kept >= MIN_KEPT))
    if types is not None:
        crossed = crossed_types(types)
        add(f"a question type pays >= {CROSS_COST:g} points for the low tier and <= {CROSS_FREE:g} for the fewest "
            "blocks, another the reverse", crossed, bool(crossed["tier"] and crossed["num_blocks"]))
    probe = probe_headroom(room)
    add(f"probe beats best static by >= {PROBE_HEADROOM:g} points where 20-80% of configurations fit", probe,
        None if probe is None else probe >= PROBE_HEADROOM)
    if curve is not None:
        add("block importance ranks agree across calibration halves (MolmoE-1B: Spearman 0.85)",
            curve["agreement_spearman"], None)
    return out


def headline(t: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/tradeoff.json's headline: the few numbers compared across experiments."""
    ends = t["full_vs_smallest"]
    met = [g["met"] for g in t["goals"] if g["met"] is not None]
    return {"probe_headroom_points": probe_headroom(t["headroom"]),
            "full_over_smallest_latency": ends["full_over_smallest_latency"],
            "accuracy_points_full_minus_smallest": ends["accuracy_points_full_minus_smallest"],
            "goals_met": sum(met), "goals_measured": len(met)}
