"""Honest evaluation of the latency estimator: whole configurations and whole lengths held out.

Two splits, each with its own model fitted on the rest:

* ``configs``: a seeded random share of the knob configurations is removed from training
  entirely (every length of those configurations); the model is scored on them.
* ``lengths``: the held-out text lengths (by default every profiled length but the shortest
  and the longest, so the test is interpolation) are removed for every configuration,
  and the held-out configurations too, so the scored rows share neither with training.

Scores per part and for the request total: MAPE, R^2, share within +-5% and +-10%, against the
same per-cell medians the models fit (drift-corrected by default; see ``EstimatorParams.target``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from knobctl.latency.estimator import EstimatorParams, LatencyEstimator, target_column
from knobctl.latency.request import PARTS, request_ms


@dataclass(frozen=True)
class Split:
    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    held_out: list[str]  # the configurations or text lengths left out of training


def holdout_configs(configs: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded share of configurations (at least one, never all)."""
    n = min(max(1, round(len(configs) * fraction)), len(configs) - 1)
    rng = np.random.default_rng([seed, 7])
    return sorted(rng.choice(sorted(configs), size=n, replace=False).tolist())


def holdout_lengths(text_tokens: list[int], chosen: tuple[int, ...] | None) -> list[int]:
    values = sorted(set(text_tokens))
    if chosen is not None:
        missing = sorted(set(chosen) - set(values))
        if missing:
            raise ValueError(f"fit_estimator.holdout_text_tokens {missing} were not profiled; profiled: {values}")
        return sorted(chosen)
    return values[1:-1]


def make_splits(summary: pd.DataFrame, p: EstimatorParams, seed: int) -> list[Split]:
    ok = summary[summary["repeats"] > 0]
    held_c = set(holdout_configs(ok["config"].unique().tolist(), p.holdout_config_fraction, seed))
    held_t = set(holdout_lengths(ok["text_tokens"].tolist(), p.holdout_text_tokens))
    in_c = ok["config"].isin(held_c)
    in_t = ok["text_tokens"].isin(held_t)
    splits = [Split("configs", ok[~in_c], ok[in_c], sorted(held_c))]
    if held_t:
        splits.append(Split("lengths", ok[~in_c & ~in_t], ok[~in_c & in_t], [str(t) for t in sorted(held_t)]))
    return splits


def scores(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    keep = np.isfinite(measured) & np.isfinite(predicted) & (measured > 0)
    m, p = measured[keep], predicted[keep]
    if len(m) == 0:
        return {"n": 0}
    rel = np.abs(p - m) / m
    ss_res = float(((m - p) ** 2).sum())
    ss_tot = float(((m - m.mean()) ** 2).sum())
    return {
        "n": len(m),
        "mape": float(rel.mean()),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "within_5pct": float((rel <= 0.05).mean()),
        "within_10pct": float((rel <= 0.10).mean()),
        "median_abs_pct_error": float(np.median(rel)),
    }


def evaluate_split(split: Split, tiers: Mapping[str, Mapping[str, int]], p: EstimatorParams, seed: int
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fit on the split's train rows, score its test rows; also return measured-vs-predicted rows."""
    est = LatencyEstimator.fit(split.train, tiers, p, seed)
    test = split.test
    pred = est.predict(test["tier"].to_numpy(), test["top_k"].to_numpy(), test["num_blocks"].to_numpy(),
                       test["text_tokens"].to_numpy(), test["output_tokens"].to_numpy())
    cols = {part: target_column(test, part, p.target) for part in PARTS}
    measured_total = request_ms(test[cols["vision_ms"]], test[cols["prefill_ms"]],
                                test[cols["decode_ms_per_token"]], test["output_tokens"])
    result: dict[str, Any] = {"train_rows": len(split.train), "test_rows": len(test),
                              "measured": "drift-corrected medians" if cols["vision_ms"].endswith("_adj_median")
                              else "medians",
                              "held_out": split.held_out}
    points = []
    for part in (*PARTS, "total_ms"):
        measured = np.asarray(measured_total if part == "total_ms" else test[cols[part]], dtype=float)
        predicted = pred[part].to_numpy(float)
        result[part] = scores(measured, predicted)
        points.append(pd.DataFrame({
            "split": split.name, "part": part, "config": test["config"].to_numpy(),
            "text_tokens": test["text_tokens"].to_numpy(), "output_tokens": test["output_tokens"].to_numpy(),
            "measured_ms": measured, "predicted_ms": predicted,
        }))
    return result, pd.concat(points, ignore_index=True).dropna(subset=["measured_ms"])


def evaluate(summary: pd.DataFrame, tiers: Mapping[str, Mapping[str, int]], p: EstimatorParams, seed: int
             ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics for every split and the measured-vs-predicted points behind them."""
    metrics: dict[str, Any] = {}
    frames = []
    for split in make_splits(summary, p, seed):
        metrics[split.name], pts = evaluate_split(split, tiers, p, seed)
        frames.append(pts)
    return metrics, pd.concat(frames, ignore_index=True)


def estimator_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics/estimator.json's headline: the request total on held-out configurations and on held-out lengths
    (the full per-part scores of :func:`evaluate` go beside the model)."""
    out: dict[str, Any] = {}
    for split in ("configs", "lengths"):
        total = metrics.get(split, {}).get("total_ms", {})
        if total.get("n"):
            out |= {f"{split}_total_mape": round(total["mape"], 4), f"{split}_total_within_10pct":
                    round(total["within_10pct"], 4), f"{split}_total_r2": round(total["r2"], 4)}
    return out
