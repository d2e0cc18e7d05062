"""The fit_estimator stage as two calls: :func:`fit_from_profile` scores the estimator on held-out
configurations and lengths, then fits it on every profiled cell; :func:`write_estimator` writes the model
folder, its metrics and its plots as one set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from knobctl.contracts import PROFILE_SUMMARY, read_table
from knobctl.io import output_set, read_provenance, write_csv, write_json, write_parquet
from knobctl.latency.estimator import EstimatorParams, LatencyEstimator
from knobctl.latency.estimator_eval import estimator_headline, evaluate
from knobctl.latency.request import PARTS
from knobctl.params import InputError


@dataclass(frozen=True)
class EstimatorRun:
    """The fitted estimator with its held-out scores (every split and part) and the held-out points."""

    estimator: LatencyEstimator
    evaluation: dict[str, Any]
    points: pd.DataFrame

    def line(self) -> str:
        cfg = self.evaluation["configs"]
        return (f"fit_estimator: held-out configurations: total within 10% {cfg['total_ms']['within_10pct']:.1%}, "
                f"MAPE vision {cfg['vision_ms']['mape']:.1%} prefill {cfg['prefill_ms']['mape']:.1%} "
                f"decode {cfg['decode_ms_per_token']['mape']:.1%} total {cfg['total_ms']['mape']:.1%}")


def fit_from_profile(profile: str | Path, p: EstimatorParams, seed: int) -> EstimatorRun:
    """Score on held-out splits, then fit on every profiled cell of ``profile`` (a profile summary)."""
    summary = read_table(profile, PROFILE_SUMMARY)
    meta = read_provenance(profile)
    if "tiers" not in meta:
        raise InputError(f"{profile} has no tier table in its metadata; rerun `dvc repro profile_latency`")
    evaluation, points = evaluate(summary, meta["tiers"], p, seed)
    final = LatencyEstimator.fit(summary[summary["repeats"] > 0], meta["tiers"], p, seed,
                                 meta={k: meta.get(k) for k in ("device", "dtype", "model", "model_hash", "git_commit")})
    evaluation["profile"] = {k: meta.get(k) for k in ("device", "dtype", "model", "batch_size")}
    return EstimatorRun(final, evaluation, points)


def write_estimator(run: EstimatorRun, out: str | Path, metrics: str | Path, plots: str | Path) -> None:
    """The estimator folder (with ``evaluation.json`` and the held-out points), the metrics headline and one
    CSV per part for ``dvc plots`` (held-out configurations): all of them or none."""
    with output_set() as outs:
        folder = outs.dir(Path(out))
        run.estimator.write(folder)
        write_json(folder / "evaluation.json", run.evaluation)
        write_parquet(folder / "holdout_points.parquet", run.points)
        write_json(outs.file(metrics), {"headline": estimator_headline(run.evaluation)})
        folder_plots = outs.dir(Path(plots))
        points = run.points
        for part in (*PARTS, "total_ms"):
            sel = points[(points["split"] == "configs") & (points["part"] == part)]
            write_csv(folder_plots / f"{part}.csv", sel[["config", "text_tokens", "output_tokens", "measured_ms",
                                                         "predicted_ms"]])
