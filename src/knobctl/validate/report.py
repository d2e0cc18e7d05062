"""reports/summary.md from the pipeline's summaries and plots: the goals, met or not, and the numbers.

Every figure comes from a stage's summary file (data/validate/summary.json, plots/train/training.json,
data/rollouts/summary.json, metrics/estimator.json, plots/tradeoff/tradeoff.json); each goal, with whether it is
met, was judged by the stage that measured it (:mod:`knobctl.goals`). Nothing is measured here, so the report
changes only when a summary does. Units are in the column headers; accuracies are VQA accuracy in percent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from knobctl.validate.summary import METHODS

PLOTS = (("accuracy.png", "Accuracy against budget, measured"),
         ("latency.png", "Controller latency against each budget"),
         ("choices.png", "Controller tier choice per budget"),
         ("pareto.png", "Static configurations: accuracy against latency"))

#: How each validate goal's measured value reads in the report, from data/validate/summary.json's summary.
SHOW_VALIDATE: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "validate_not_below_lookup": lambda s: f"{s['budgets_not_below_lookup_within_budget']} of {s['budgets_with_lookup']} "
                                           "budgets",
    "validate_gain_over_lookup": lambda s: (f"{_pts(s['mean_gain_over_lookup_within_budget'])} "
                                           f"[{_pts(s['mean_gain_over_lookup_within_budget_ci95_low'])}, "
                                           f"{_pts(s['mean_gain_over_lookup_within_budget_ci95_high'])}]"),
    "validate_above_random": lambda s: f"{s['budgets_above_random_where_choice']} of {s['budgets_with_choice']} budgets",
    "validate_violations": lambda s: (f"worst {_pct(s['worst_violation_rate_where_cheapest_meets'])} over "
                                      f"{s['budgets_cheapest_meets']} budgets (lookup: "
                                      f"{_pct(s.get('worst_lookup_violation_rate_where_cheapest_meets'))})"),
    "validate_overhead": lambda s: f"{s['controller_overhead_ms']:.2f} ms = {_pct(s['controller_overhead_share'])}",
    "validate_static_slack": lambda s: (f"worst {_pts(s.get('worst_gain_over_static'))} over "
                                        f"{s['budgets_with_static']} budgets"),
}

#: How each held-out goal's measured value reads, from plots/train/training.json's headline.
SHOW_TRAIN: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "train_not_below_static": lambda h: f"{h['budgets_not_below_static']} of {h['budgets_with_static']} budgets",
    "train_gain_where_choice": lambda h: (f"{_pts(h['mean_gain_where_choice'])}{_ci(h, 'mean_gain_where_choice')} "
                                          f"over {h['budgets_with_choice']} budgets"),
    "train_gap_closed": lambda h: _pct(h["gap_closed_where_choice"]),
    "train_probe_distance": lambda h: (f"probe - controller {_pts(h['probe_minus_controller_where_choice'])}"
                                       f"{_ci(h, 'probe_minus_controller')} (probe over static "
                                       f"{_pts(h['probe_gain_where_choice'])})"),
}


def goal_rows(goals: Sequence[Mapping[str, Any]], show: Mapping[str, Callable[[Mapping[str, Any]], str]],
              figures: Mapping[str, Any]) -> list[str]:
    """A goals table: each goal's description, its measured value as ``show`` reads it from ``figures`` (the raw
    value where ``show`` has no reading), and whether it is met (``-`` where it could not be measured)."""
    out = ["| goal | measured | met |", "| --- | --- | --- |"]
    for g in goals:
        measured = show[g["name"]](figures) if g.get("name") in show else g["measured"]
        met = "-" if g["met"] is None else "yes" if g["met"] else "**no**"
        out.append(f"| {g['goal']} | {measured} | {met} |")
    return out


def render(validate: Mapping[str, Any], train: Mapping[str, Any] | None = None,
           table: Mapping[str, Any] | None = None, estimator: Mapping[str, Any] | None = None,
           plots_dir: str = "../plots/validate", tradeoff: Mapping[str, Any] | None = None) -> str:
    """The report's Markdown."""
    s = validate["summary"]
    out = ["# knobctl: validation summary", "",
           (f"{s['samples']} held-out test samples x {len(s['budgets'])} budgets, {s['requests']} requests "
            "measured one at a time on the real model, from the decoded image to the last token "
            "(`dvc repro validate`; definitions in `src/knobctl/validate/measure.py`)."
            + (f" {s['error_samples']} more test samples could not be asked (an image that does not decode or is "
               "too large, a question too long): their error rows are in data/validate/requests.parquet."
               if s.get("error_samples") else "")), "",
           "## Goals", ""]
    out += goal_rows(validate["goals"], SHOW_VALIDATE, s)
    out += ["", "## Against lookup: what per-request control buys", "",
            ("Lookup takes, at every request, the best single configuration for the budget under the same live speed "
             "and overhead the controller is given; it adapts to the budget and the machine, never to the request. "
             "Accuracy within budget (a late answer scores 0), gain with its paired bootstrap 95% interval over "
             "samples, and both methods' violation rates."
             + (" A budget is in ms at the calibration burst's speed, and each sample's deadline is the budget times "
                "the machine's median speed when the sample started over the burst's (`validate.budgets_follow_speed`)"
                f": p10 / p50 / p90 {' / '.join(f'{q:.2f}x' for q in s['speed_p10_p50_p90'])} in this run, so a "
                "budget keeps the share of configurations that fit while the machine drifts."
                if s.get("speed_p10_p50_p90") else "")), "",
            ("| budget (ms) | configurations fitting | controller | lookup | gain (points) | 95% interval | "
             "controller viol | lookup viol | random | gain over random |"), "| " + " | ".join(["---"] * 10) + " |"]
    for e in validate["per_budget"].values():
        c, lk, vs, vr = e["controller"], e.get("lookup"), e.get("controller_vs_lookup"), e.get("controller_vs_random")
        out.append("| " + " | ".join([
            f"{e['budget_ms']:.1f}", "-" if e.get("fit_share") is None else _pct(e["fit_share"]),
            _pct(c["accuracy_within_budget"]), _pct(lk["accuracy_within_budget"]) if lk else "-",
            f"{100 * vs['gain']:+.1f}" if vs else "-",
            f"[{100 * vs['ci95'][0]:+.1f}, {100 * vs['ci95'][1]:+.1f}]" if vs else "-",
            _pct(c["violation_rate"]), _pct(lk["violation_rate"]) if lk else "-",
            _pct(e["random"]["accuracy_within_budget"]) if e.get("random") else "-",
            (f"{100 * vr['gain']:+.1f} [{100 * vr['ci95'][0]:+.1f}, {100 * vr['ci95'][1]:+.1f}]" if vr else "-"),
        ]) + " |")
    others = [m for m in METHODS if m not in ("controller", "static")]
    out += ["", "## Accuracy (%), violation rate (%) and latency (ms) per budget", "",
            ("| budget (ms) | controller acc | viol | mean / p95 (ms) | static | static acc | viol | "
             + " | ".join(f"{m} acc" for m in others) + " |"), "| " + " | ".join(["---"] * (7 + len(others))) + " |"]
    for e in validate["per_budget"].values():
        c, st = e["controller"], e["static"]
        cells = [f"{e['budget_ms']:.1f}", _pct(c["accuracy"]), _pct(c["violation_rate"]),
                 f"{c['latency_mean_ms']:.1f} / {c['latency_p95_ms']:.1f}",
                 st["config"] if st else "none fits", _pct(st["accuracy"]) if st else "-",
                 _pct(st["violation_rate"]) if st else "-"]
        cells += [_pct(e[m]["accuracy"]) if e.get(m) else "-" for m in others]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Accuracy within budget (%): an answer over its budget counts as wrong", "",
            ("Accuracy alone rewards a method that misses its budget more often; here a late answer scores 0, and "
             "best_measured (the best of every request measured for a sample that met the budget) bounds "
             "every method. Static is chosen once, at the calibration burst's speed: "
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
                f"| held-out mean gain over best static | {_pts(h['mean_gain_over_static'])} |",
                (f"| chance a chosen configuration runs over (profiled spread), mean over budgets | "
                 f"{_pct(h.get('mean_slow_rate'))} |"),
                (f"| gain over best static within budget (profiled spread) where a choice exists | "
                 f"{_pts(h.get('mean_gain_within_budget_where_choice'))} |"), ""]
        if train.get("goals"):
            out += [("Goals on held-out samples (estimated latency; `dvc repro train_controller`, "
                     "plots/train/training.json):"), ""]
            out += goal_rows(train["goals"], SHOW_TRAIN, h) + [""]
    if table:
        h = table["headline"]
        out += ["## Accuracy table (val rollouts)", "", "| configuration | accuracy |", "| --- | --- |",
                f"| full | {_pct(h['full_accuracy'])} |", f"| smallest | {_pct(h['smallest_accuracy'])} |",
                f"| best static ({table['best_static']['config']}) | {_pct(h['best_static_accuracy'])} |",
                f"| per-sample oracle | {_pct(h['oracle_accuracy'])} |", ""]
        if model := table.get("model"):
            out += [(f"Model family: {model['name']} (`{model['family']}`). Its routers' kept expert weights: "
                     f"{model['top_k_weights']}."), ""]
    if estimator:
        held = estimator.get("headline", {})
        if "configs_total_mape" in held:
            out += [(f"Latency estimator on held-out configurations: MAPE {_pct(held['configs_total_mape'])}, "
                     f"{_pct(held['configs_total_within_10pct'])} within +-10%."), ""]
    if tradeoff:
        out += tradeoff_section(tradeoff)
    out += ["## Plots", ""] + [f"![{title}]({plots_dir}/{name})" for name, title in PLOTS] + [""]
    return "\n".join(out)


def tradeoff_section(t: Mapping[str, Any]) -> list[str]:
    """What the knobs trade (the tradeoff stage, val tables, estimated latency), beside MolmoE-1B."""
    e, m = t["full_vs_smallest"], t["molmoe_1b"]
    out = ["## Trade-off of the model's knobs (val tables, estimated latency; `dvc repro tradeoff`)", ""]
    out += goal_rows(t["goals"], {}, {})
    out += ["", "| | configuration | accuracy | latency (ms) |", "| --- | --- | --- | --- |",
            f"| full | {e['full']} | {e['full_accuracy']:.1f} | {e['full_latency_ms']:.1f} |",
            f"| smallest | {e['smallest']} | {e['smallest_accuracy']:.1f} | {e['smallest_latency_ms']:.1f} |",
            (f"| MolmoE-1B (published, H100) | best / cheapest | {100 * m['best_accuracy']:.1f} / "
             f"{100 * m['cheapest_accuracy']:.1f} | {m['best_latency_ms']} / {m['cheapest_latency_ms']} |"), "",
            "Each knob alone, the others at their maximum:", "", "| knob | setting | accuracy | latency (ms) |",
            "| --- | --- | --- | --- |"]
    for knob, rows in t["knobs"].items():
        out += [f"| {knob} | {r[knob]} | {r['accuracy']:.1f} | {r['latency_ms']:.1f} |" for r in rows]
    types = t.get("types") or {}
    if types:
        lowest = {knob: next(iter(v)) for knob, v in next(iter(types.values()))["knobs"].items()}
        out += ["", ("Per question type: accuracy at full, at each knob's lowest setting with the others at their "
                     "maximum (its cost in points), and at the smallest configuration:"), "",
                (f"| type | questions | full | tier {lowest['tier']} | top_k {lowest['top_k']} | "
                 f"{lowest['num_blocks']} blocks | smallest |"), "| --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {name} | {r['n']} | {r['full']:.1f} | "
                + " | ".join(f"{r['knobs'][k][lowest[k]]:.1f} ({-r['cost'][k]:+.1f})" for k in lowest)
                + f" | {r['smallest']:.1f} |" for name, r in types.items()]
    out += ["", "Headroom over the best static configuration (held-out samples, points):", "",
            "| budget (ms) | configurations fitting | static | static acc | oracle gain | probe gain |",
            "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['budget_ms']:.1f} | {100 * r['fit_share']:.0f}% | {r['static_config'] or 'none fits'} | "
            f"{'-' if r['static_accuracy'] is None else r['static_accuracy']} | "
            f"{'-' if r['oracle_gain'] is None else r['oracle_gain']} | "
            f"{'-' if r['probe_gain'] is None else r['probe_gain']} |" for r in t["headroom"]]
    c = t.get("block_importance")
    if c:
        drops = ", ".join(f"{k}: {v}%" for k, v in c["accuracy_cost_pct"].items() if k != "0")
        molmoe = ", ".join(f"{k}: {v}%" for k, v in m["blocks_dropped_accuracy_cost_pct"].items())
        out += ["", (f"Block importance (order {c['order']}): accuracy cost of dropping the least important "
                     f"blocks first, {drops}; block 0 alone {c['block0_accuracy_cost_pct']}%; rankings on two "
                     f"halves agree at Spearman {c['agreement_spearman']}. MolmoE-1B: {molmoe}; block 0 "
                     f"{m['block0_accuracy_cost_pct']}%; Spearman {m['importance_rank_agreement_spearman']}.")]
    return out + [""]


def _ci(h: Mapping[str, Any], key: str) -> str:
    """`` [low, high]`` of a headline figure's paired 95% interval, or nothing where the metrics have none."""
    lo, hi = h.get(f"{key}_ci95_low"), h.get(f"{key}_ci95_high")
    return "" if lo is None or hi is None else f" [{_pts(lo)}, {_pts(hi)}]"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f} points"
