"""reports/summary.md from the pipeline's metrics and plots: the goals, met or not, and the numbers.

Every figure comes from a metrics file; nothing is measured here, so the report changes only
when a metric does. Units are in the column headers; accuracies are VQA accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from knobctl.validate.summary import METHODS

PLOTS = (("accuracy.png", "Accuracy against budget, measured"),
         ("latency.png", "Controller latency against each budget"),
         ("choices.png", "Controller tier choice per budget"),
         ("pareto.png", "Static configurations: accuracy against latency"))

# (label, how the value reads, goal test) for the validate summary
GOALS = (
    ("controller accuracy >= best static at every budget",
     lambda s: f"{s['budgets_at_least_static']} of {s['budgets_with_static']} budgets",
     lambda s: s["budgets_at_least_static"] == s["budgets_with_static"]),
    ("mean accuracy gain over best static >= 2 points",
     lambda s: _pts(s["mean_gain_over_static"]), lambda s: (s["mean_gain_over_static"] or 0) >= 0.02),
    ("violation rate <= 5% at every budget",
     lambda s: f"worst {_pct(s['worst_violation_rate'])}", lambda s: s["worst_violation_rate"] <= 0.05),
    (">= 50% of the static-to-oracle gap closed",
     lambda s: _pct(s["static_to_oracle_gap_closed"]), lambda s: (s["static_to_oracle_gap_closed"] or 0) >= 0.5),
    ("controller overhead <= 2% of mean latency",
     lambda s: f"{s['controller_overhead_ms']:.2f} ms = {_pct(s['controller_overhead_share'])}",
     lambda s: s["controller_overhead_share"] <= 0.02),
)


def render(validate: Mapping[str, Any], train: Mapping[str, Any] | None = None,
           table: Mapping[str, Any] | None = None, estimator: Mapping[str, Any] | None = None,
           plots_dir: str = "../plots/validate") -> str:
    """The report's Markdown."""
    s = validate["summary"]
    out = ["# knobctl: validation summary", "",
           (f"{s['samples']} held-out test samples x {len(s['budgets'])} budgets, {s['requests']} requests "
            "measured one at a time on the real model, from the decoded image to the last token "
            "(`dvc repro validate`; definitions in `src/knobctl/validate/measure.py`)."), "",
           "## Goals", "", "| goal | measured | met |", "| --- | --- | --- |"]
    out += [f"| {label} | {show(s)} | {'yes' if ok(s) else '**no**'} |" for label, show, ok in GOALS]
    out += ["", "## Accuracy (%), violation rate (%) and latency (ms) per budget", "",
            ("| budget (ms) | controller acc | viol | mean / p95 (ms) | static | static acc | viol | full acc | "
             "smallest acc | random acc | oracle acc |"), "| " + " | ".join(["---"] * 11) + " |"]
    for e in validate["per_budget"].values():
        c, st = e["controller"], e["static"]
        cells = [f"{e['budget_ms']:.1f}", _pct(c["accuracy"]), _pct(c["violation_rate"]),
                 f"{c['latency_mean_ms']:.1f} / {c['latency_p95_ms']:.1f}",
                 st["config"] if st else "none fits", _pct(st["accuracy"]) if st else "-",
                 _pct(st["violation_rate"]) if st else "-"]
        cells += [_pct(e[m]["accuracy"]) if e.get(m) else "-" for m in METHODS[2:]]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Accuracy within budget (%): an answer over its budget counts as wrong", "",
            ("The goals above compare accuracy alone; a method that misses its budget more often can score higher "
             "there. Here a late answer scores 0: "
             f"controller at least static at {s['budgets_at_least_static_within_budget']} of "
             f"{s['budgets_with_static']} budgets, mean gain {_pts(s['mean_gain_over_static_within_budget'])}."), "",
            "| budget (ms) | " + " | ".join(METHODS) + " |", "| " + " | ".join(["---"] * (len(METHODS) + 1)) + " |"]
    out += ["| " + " | ".join([f"{e['budget_ms']:.1f}", *(_pct(e[m]["accuracy_within_budget"]) if e.get(m) else "-"
                                                          for m in METHODS)]) + " |"
            for e in validate["per_budget"].values()]
    cal = s["calibration"]
    out += ["", "## Latency model against the clock", "",
            "| quantity | value |", "| --- | --- |",
            f"| measured / estimated latency, median over all requests | {s['measured_over_estimated_median']:.2f}x |",
            f"| estimator error (mean absolute, relative to measured) | {_pct(s['estimator_mape'])} |",
            ("| measured / estimated, fixed configurations, p10 / p50 / p90 | "
             + " / ".join(f"{q:.2f}x" for q in s.get("measured_over_estimated_fixed_p10_p50_p90") or []) + " |"),
            ("| starting plan (calibration burst, speed quantile): speed scale, controller time | "
             f"{cal['scale']:.2f}x, {cal['overhead_ms']:.2f} ms |"),
            f"| budget / budget given to the controller, median | {s['controller_budget_scale_median']:.2f}x |",
            ("| measured requests whose answer scores differently from its cached test rollout "
             f"(the oracle's premise) | {s.get('requests_differing_from_rollouts', '-')} of {s['requests']} |"), ""]
    if train:
        h = train["headline"]
        out += ["## Controller training (cached rollouts, estimated latency)", "",
                "| quantity | value |", "| --- | --- |",
                f"| steps, seconds | {train['steps']}, {train['train_seconds']:.0f} s |",
                f"| cached rollouts per second | {train['rollouts_per_s']:,} |",
                (f"| held-out budgets at least / above best static | {h['budgets_at_least_static']} / "
                 f"{h['budgets_above_static']} of {h['budgets_with_static']} |"),
                f"| held-out mean gain over best static | {_pts(h['mean_gain_over_static'])} |", ""]
    if table:
        h = table["headline"]
        out += ["## Accuracy table (val rollouts)", "", "| configuration | accuracy |", "| --- | --- |",
                f"| full | {_pct(h['full_accuracy'])} |", f"| smallest | {_pct(h['smallest_accuracy'])} |",
                f"| best static ({table['best_static_config']}) | {_pct(h['best_static_accuracy'])} |",
                f"| per-sample oracle | {_pct(h['oracle_accuracy'])} |", ""]
    if estimator:
        held = estimator.get("headline", {})
        if "configs_total_mape" in held:
            out += [(f"Latency estimator on held-out configurations: MAPE {_pct(held['configs_total_mape'])}, "
                     f"{_pct(held['configs_total_within_10pct'])} within +-10%."), ""]
    out += ["## Plots", ""] + [f"![{title}]({plots_dir}/{name})" for name, title in PLOTS] + [""]
    return "\n".join(out)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f} points"
