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
* the goals a faithful miniature of a pretrained MoE VLM meets (:data:`knobctl.goals.TRADEOFF_GOALS`), each
  met or not.

Full, smallest, the best static configuration and the oracle are :mod:`knobctl.table.measures`'.

Every accuracy is in points (0..100) and every latency in ms, so the JSON reads as a table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from knobctl.controller.probe import L2, fit_probe, probe_choices
from knobctl.controller.tables import CacheTables, budgets_between, build_tables
from knobctl.controller.training import split_samples
from knobctl.execution import use_threads
from knobctl.goals import CHOICE_FIT_RANGE, TRADEOFF_GOALS, goal, tally
from knobctl.io import output_set, round4, write_csv, write_json
from knobctl.knobs import TIER_ORDER, KnobConfig, KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import build, require, require_int
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.measures import (
    best_static,
    config_accuracy,
    full_index,
    oracle_scores,
    smallest_index,
    static_fits,
)

#: MolmoE-1B with the knobs applied at inference (published; COCO-2014 VQA, H100): what the default mimics.
MOLMOE_1B = {
    "best_accuracy": 0.826, "best_latency_ms": 294.7, "cheapest_accuracy": 0.654, "cheapest_latency_ms": 166.5,
    "full_over_cheapest_latency": round(294.7 / 166.5, 2),
    "blocks_dropped_accuracy_cost_pct": {"1": 3.1, "2": 5.4, "3": 7.5, "4": 18.4},
    "block0_accuracy_cost_pct": 62.7, "importance_rank_agreement_spearman": 0.85,
}


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

    accuracy: np.ndarray  # [C] 0..1
    latency_ms: torch.Tensor  # [C]

    @classmethod
    def of(cls, tables: CacheTables) -> PerConfig:
        return cls(config_accuracy(tables.scores), tables.latency_ms.median(0).values)

    def row(self, j: int) -> dict[str, float]:
        return {"accuracy": _pts(self.accuracy[j]), "latency_ms": round(float(self.latency_ms[j]), 2)}


def _settings(tables: CacheTables, knob: str) -> list[Any]:
    """The values of ``knob`` in the tables' configurations, in knob order (tiers by cost)."""
    return sorted({getattr(k, knob) for k in tables.configs}, key=lambda v: TIER_ORDER.index(v) if knob == "tier" else v)


def knob_sweeps(tables: CacheTables, per: PerConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """Accuracy and median latency of each setting of each knob, the other knobs at their maximum."""
    per = per or PerConfig.of(tables)
    col = {k: j for j, k in enumerate(tables.configs)}
    full = tables.configs[full_index(tables.configs)]
    out: dict[str, list[dict[str, Any]]] = {}
    for knob in ("tier", "top_k", "num_blocks"):
        rows = []
        for v in _settings(tables, knob):
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
    full, smallest = tables.configs[full_index(tables.configs)], tables.configs[smallest_index(tables.configs)]
    out: dict[str, dict[str, Any]] = {}
    for qtype in sorted(set(tables.question_types.tolist())):
        acc = config_accuracy(tables.scores[torch.from_numpy(tables.question_types == qtype)])  # [C]
        sweeps: dict[str, dict[str, float]] = {}
        for knob in ("tier", "top_k", "num_blocks"):
            sweeps[knob] = {str(v): _pts(acc[col[k]]) for v in _settings(tables, knob)
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
    """Per budget: share of configurations that fit as a static choice (on the training samples), the best static
    configuration (chosen on the training samples), and the oracle's and probe's held-out gain over it."""
    train_acc = config_accuracy(tables.scores[train_idx])  # [C]
    train_lat = tables.latency_ms[train_idx]  # [T, C]
    prob = fit_probe(tables, train_idx, probe_l2)[eval_idx]  # [E, C]
    acc = torch.nan_to_num(tables.scores[eval_idx], nan=0.0)  # [E, C]; a missing cell is a wrong answer
    lat = tables.latency_ms[eval_idx]  # [E, C]
    rows_e = torch.arange(len(eval_idx))
    rows = []
    for b in budgets:
        static = best_static(train_acc, train_lat, b)
        row: dict[str, Any] = {"budget_ms": b, "fit_share": round4(static_fits(train_lat, b).mean()),
                               "static_config": None, "static_accuracy": None, "oracle_gain": None, "probe_gain": None}
        if static is not None:
            s_acc = float(acc[:, static].mean())
            oracle = float(oracle_scores(acc, lat, b).mean())
            probe = float(acc[rows_e, probe_choices(prob, lat, b, tables.complexity)].mean())
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
    # the smallest configuration is MolmoE-1B's "cheapest": the lowest tier, top_k and blocks
    full, smallest = full_index(tables.configs), smallest_index(tables.configs)
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


def probe_headroom(room: Sequence[Mapping[str, Any]]) -> float | None:
    """The probe's mean gain over the best static configuration (points) at the budgets where a choice exists
    (:data:`knobctl.goals.CHOICE_FIT_RANGE` of the configurations fit). None where no budget is in that range."""
    low, high = CHOICE_FIT_RANGE
    mid = [r["probe_gain"] for r in room if r["probe_gain"] is not None and low <= r["fit_share"] <= high]
    return round(float(np.mean(mid)), 2) if mid else None


def crossed_types(types: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Question types that pay for one resource and not the other (the ``crossed_needs`` goal's threshold and
    bound): ``tier`` (the low tier costs at least the threshold in points, the fewest blocks at most the bound)
    and ``num_blocks`` (the reverse)."""
    g = goal("crossed_needs")
    out: dict[str, list[str]] = {"tier": [], "num_blocks": []}
    for name, t in types.items():
        cost = t["cost"]
        if "tier" not in cost or "num_blocks" not in cost:
            continue
        for need, spare in (("tier", "num_blocks"), ("num_blocks", "tier")):
            if cost[need] >= g.threshold and cost[spare] <= g.bound:
                out[need].append(name)
    return out


def _block_steps(sweeps: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[float], float | None, float]:
    """What each further dropped block costs (points, fewest dropped first), the smallest increase from one step to
    the next (0 with a single step, None with none), and the share of the full accuracy the fewest blocks keep."""
    blocks = [r["accuracy"] for r in reversed(sweeps["num_blocks"])]  # full first
    steps = np.diff([0.0, *[blocks[0] - a for a in blocks[1:]]]) if len(blocks) > 1 else np.array([])
    rise = float(np.diff(steps).min()) if len(steps) > 1 else (0.0 if len(steps) else None)
    kept = round(blocks[-1] / blocks[0], 4) if len(blocks) > 1 and blocks[0] > 0 else float("nan")
    return [round(float(x), 2) for x in steps], rise, kept


def goals(ends: Mapping[str, Any], sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
          room: Sequence[Mapping[str, Any]], curve: Mapping[str, Any] | None,
          types: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each of :data:`knobctl.goals.TRADEOFF_GOALS` with its measured value and whether it is met; the crossing
    is left out without question types, the block-rank agreement without a block-importance curve."""
    measured: dict[str, Any] = {"latency_full_over_smallest": ends["full_over_smallest_latency"],
                                "accuracy_full_minus_smallest": ends["accuracy_points_full_minus_smallest"]}
    for knob, rows in sweeps.items():
        measured[f"latency_spread_{knob}"] = round(_spread(rows, "latency_ms"), 4) if len(rows) > 1 else float("nan")
        measured[f"accuracy_cost_{knob}"] = (round(rows[-1]["accuracy"] - rows[0]["accuracy"], 2) if len(rows) > 1
                                             else float("nan"))
    steps, rise, measured["fewest_blocks_keep"] = _block_steps(sweeps)
    measured["probe_headroom"] = probe_headroom(room)
    out = []
    for g in TRADEOFF_GOALS:
        if g.name == "blocks_graded":
            out.append(g.result(steps, value=rise))
        elif g.name == "crossed_needs":
            if types is not None:
                crossed = crossed_types(types)
                out.append(g.result(crossed, met=bool(crossed["tier"] and crossed["num_blocks"])))
        elif g.name == "block_rank_agreement":
            if curve is not None:
                out.append(g.result(curve["agreement_spearman"]))
        else:
            out.append(g.result(measured[g.name]))
    return out


def headline(t: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/tradeoff.json's headline: the few numbers compared across experiments."""
    ends = t["full_vs_smallest"]
    return {"probe_headroom_points": probe_headroom(t["headroom"]),
            "full_over_smallest_latency": ends["full_over_smallest_latency"],
            "accuracy_points_full_minus_smallest": ends["accuracy_points_full_minus_smallest"], **tally(t["goals"])}


def run_tradeoff(own: Mapping[str, Any], grid: KnobGrid, seed: int, rollouts: str | Path, estimator: str | Path,
                 importance: str | Path | None = None) -> dict[str, Any]:
    """The tradeoff stage's section from the accuracy table at ``rollouts`` and the estimator at ``estimator``
    (``own``: the ``tradeoff`` section), with block_importance's curve where its file exists."""
    p = TradeoffParams.from_params(own)
    use_threads(p.num_threads)
    table = AccuracyTable.load(rollouts)
    table.check_grid(grid, rollouts, "tradeoff", "their cells count as wrong answers")
    tables = build_tables(table, LatencyEstimator.load(estimator), grid.configs())
    train_idx, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed)
    curve = json.loads(Path(importance).read_text()) if importance and Path(importance).exists() else None
    return tradeoff(tables, train_idx, eval_idx, p.num_budgets, curve, p.probe_l2)


def write_tradeoff(t: Mapping[str, Any], plots: str | Path, metrics: str | Path) -> None:
    """plots/tradeoff (tradeoff.json: the whole section; one CSV per knob sweep, the Pareto front, the headroom
    per budget) and metrics/tradeoff.json (:func:`headline`): all of them or none."""
    with output_set() as outs:
        folder = outs.dir(plots)
        write_json(folder / "tradeoff.json", t)
        for knob, rows in t["knobs"].items():
            write_csv(folder / f"knob_{knob}.csv", pd.DataFrame(rows))
        write_csv(folder / "pareto.csv", pd.DataFrame(t["pareto_front"]))
        write_csv(folder / "headroom.csv", pd.DataFrame(t["headroom"]))
        write_json(outs.file(metrics), {"headline": headline(t)})


def summary_line(t: Mapping[str, Any]) -> str:
    """The stage's last line: full against smallest, and the goals met."""
    ends, h = t["full_vs_smallest"], headline(t)
    return (f"tradeoff: full {ends['full']} {ends['full_accuracy']:.1f} pts / {ends['full_latency_ms']:.1f} ms, "
            f"smallest {ends['smallest']} {ends['smallest_accuracy']:.1f} / {ends['smallest_latency_ms']:.1f} ms "
            f"({ends['full_over_smallest_latency']:.2f}x); goals met {h['goals_met']} of {h['goals_measured']}")
