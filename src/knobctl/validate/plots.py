"""The validate stage's plots: CSV for ``dvc plots`` and the same figures as PNG.

* ``accuracy.csv`` / ``accuracy.png``: accuracy against budget, one column/line per method;
* ``violations.csv``: violation rate against budget, per method;
* ``accuracy_within_budget.csv`` (second panel of ``accuracy.png``): accuracy with every late answer
  counted wrong, per method; best_measured (the best request measured that met the budget) bounds every
  method here;
* ``latency.csv`` / ``latency.png``: every controller and static request's measured
  latency with its budget (the PNG: one box per budget, the budget marked);
* ``choices.csv`` / ``choices.png``: the controller's knob choices per budget (tier shares, mean
  top_k, mean block count); ``choices_by_type.csv`` the same per question type;
* ``gain_over_lookup.csv``: the controller's gain over lookup in accuracy within budget per budget, with
  its paired 95% interval (from the summary);
* ``pareto.csv`` / ``pareto.png``: each static configuration's test accuracy against its
  median measured latency, and which lie on the accuracy/latency Pareto front.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from knobctl.controller.tables import CacheTables
from knobctl.io import atomic_path, write_csv_atomic
from knobctl.knobs import TIER_ORDER
from knobctl.table.measures import config_accuracy
from knobctl.validate.summary import METHODS, method_rows


def tables(requests: pd.DataFrame, chosen: pd.DataFrame, test: CacheTables) -> dict[str, pd.DataFrame]:
    """Every plot's data, by file stem."""
    rows = method_rows(requests, chosen)
    rows["violation"] = rows["over"].astype(float)
    rows["score_within_budget"] = rows["score"] * ~rows["over"]
    wide = {name: rows.pivot_table(index="budget_ms", columns="method", values=col, aggfunc="mean")
            .reindex(columns=[m for m in METHODS if m in set(rows["method"])]).round(4).reset_index()
            for name, col in (("accuracy", "score"), ("violations", "violation"),
                              ("accuracy_within_budget", "score_within_budget"))}
    latency = rows[rows["method"].isin(["controller", "static"])][["method", "budget_ms", "sample_id", "latency_ms"]]
    ctrl = requests[requests["kind"] == "controller"]
    choices = _choices(ctrl.assign(question_type="all")) if len(ctrl) else pd.DataFrame()
    by_type = _choices(ctrl) if len(ctrl) else pd.DataFrame()
    return {**wide, "latency": latency.round(3).reset_index(drop=True), "choices": choices,
            "choices_by_type": by_type, "pareto": pareto(requests, test)}


def gain_frame(full: Mapping[str, Any]) -> pd.DataFrame:
    """Per budget, the controller's gain over lookup in accuracy within budget and its paired 95% interval, from
    :func:`knobctl.validate.summary.summarize`'s result (empty cells where lookup has no rows)."""
    rows = []
    for e in full["per_budget"].values():
        vs = e.get("controller_vs_lookup") or {}
        low, high = vs.get("ci95") or (None, None)
        rows.append({"budget_ms": e["budget_ms"], "gain": vs.get("gain"), "ci95_low": low, "ci95_high": high})
    return pd.DataFrame(rows, columns=["budget_ms", "gain", "ci95_low", "ci95_high"])


def _choices(ctrl: pd.DataFrame) -> pd.DataFrame:
    g = ctrl.groupby(["budget_ms", "question_type"])
    out = g.agg(requests=("tier", "size"), top_k=("top_k", "mean"), num_blocks=("num_blocks", "mean"))
    for t in TIER_ORDER:
        out[f"share_{t}"] = g["tier"].apply(lambda s, t=t: (s == t).mean())
    return out.round(4).reset_index()


def pareto(requests: pd.DataFrame, test: CacheTables) -> pd.DataFrame:
    """Static configurations: test accuracy (rollouts), median estimated and measured latency,
    and whether no other configuration is at least as accurate and faster (measured where known)."""
    measured = requests[requests["kind"] == "fixed"].groupby("config")["latency_ms"].median()
    df = pd.DataFrame({
        "config": [k.label for k in test.configs],
        "accuracy": config_accuracy(test.scores).round(4),
        "estimated_ms": test.latency_ms.median(0).values.numpy().round(3),
    })
    df["measured_ms"] = df["config"].map(measured).round(3)
    latency = df["measured_ms"].fillna(df["estimated_ms"]).to_numpy()
    acc = df["accuracy"].to_numpy()
    dominated = [((acc >= a) & (latency < lat)).any() or ((acc > a) & (latency <= lat)).any()
                 for a, lat in zip(acc, latency)]
    df["on_front"] = ~np.array(dominated)
    return df


def write_plots(requests: pd.DataFrame, chosen: pd.DataFrame, test: CacheTables, directory: Path,
                full: Mapping[str, Any] | None = None) -> dict[str, pd.DataFrame]:
    """Every CSV and PNG into ``directory``; with the summary ``full``, the gain over lookup per budget too."""
    data = tables(requests, chosen, test)
    if full is not None:
        data["gain_over_lookup"] = gain_frame(full)
    for name, df in data.items():
        write_csv_atomic(directory / f"{name}.csv", df)
    _pngs(data, directory)
    return data


def _pngs(data: dict[str, pd.DataFrame], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a pipeline machine
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        with atomic_path(directory / f"{name}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, title) in zip(axes, (("accuracy", "Accuracy against budget (measured)"),
                                        ("accuracy_within_budget", "Accuracy within budget (late = wrong)"))):
        acc = data[name]
        for m in acc.columns[1:]:
            ax.plot(acc["budget_ms"], acc[m], marker="o", label=m, linewidth=2.5 if m == "controller" else 1.2)
        ax.set(xlabel="latency budget (ms)", ylabel="VQA accuracy", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, "accuracy")

    lat = data["latency"]
    ctrl = lat[lat["method"] == "controller"]
    budgets = sorted(ctrl["budget_ms"].unique())
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.boxplot([ctrl.loc[ctrl["budget_ms"] == b, "latency_ms"] for b in budgets], positions=range(len(budgets)),
               showfliers=False)
    ax.scatter(range(len(budgets)), budgets, marker="_", s=600, color="red", label="budget")
    ax.set_xticks(range(len(budgets)), [f"{b:.1f}" for b in budgets], rotation=45)
    ax.set(xlabel="budget (ms)", ylabel="measured latency (ms)", title="Controller latency against each budget")
    ax.legend(fontsize=8)
    save(fig, "latency")

    ch = data["choices"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    bottom = np.zeros(len(ch))
    for t in TIER_ORDER:
        ax.bar(range(len(ch)), ch[f"share_{t}"], bottom=bottom, label=f"tier {t}")
        bottom += ch[f"share_{t}"].to_numpy()
    ax.set_xticks(range(len(ch)), [f"{b:.1f}" for b in ch["budget_ms"]], rotation=45)
    ax.set(xlabel="budget (ms)", ylabel="share of requests", title="Controller tier choice per budget")
    ax.legend(fontsize=8)
    save(fig, "choices")

    par = data["pareto"]
    x = par["measured_ms"].fillna(par["estimated_ms"])
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.scatter(x, par["accuracy"], s=12, color="grey", label="static configurations")
    front = par[par["on_front"]].assign(x=x[par["on_front"]]).sort_values("x")
    ax.plot(front["x"], front["accuracy"], marker="o", color="C1", label="Pareto front")
    ax.set(xlabel="median latency (ms; measured where run, else estimated)", ylabel="test accuracy",
           title="Static configurations")
    ax.legend(fontsize=8)
    save(fig, "pareto")
