"""The profile_latency stage as two calls: :func:`profile_latency` measures (or resumes measuring) every
scheduled case on the chosen executor and summarises the rows; :func:`write_profile` writes them.

The run's resume folder is keyed by what determines the rows, not by where they run (the executor's keys stay
out, :data:`knobctl.cluster.EXECUTOR_KEYS`): a run stopped under one executor resumes under the other, and the
rows' device names must still agree (:meth:`knobctl.latency.profile_run.ProfilePlan.resume`). Beside the
``profile_latency`` section only the knobs grid, the seed, ``model.tier_tokens`` and ``model.decode`` are read
(dvc.yaml lists the same); a standalone profile of a preset needs no ``model`` section at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from knobctl.cluster import EXECUTOR_KEYS
from knobctl.contracts import PROFILE_ROWS, PROFILE_SUMMARY
from knobctl.io import checkpoint_hash, output_set, params_hash, provenance, write_json, write_parquet
from knobctl.knobs import KnobGrid
from knobctl.latency.profile_run import LocalProfiler
from knobctl.latency.profiling import ROW_COLUMNS, ProfileParams, load_profiled_runtime
from knobctl.latency.stats import median_cv, round_speed, summarize, with_speed
from knobctl.model.presets import ModelParams
from knobctl.parts import PartStore

#: The keys of the ``model`` section a profile reads (dvc.yaml lists the same).
MODEL_KEYS = ("tier_tokens", "decode")


@dataclass(frozen=True)
class Profile:
    """A finished profile: every measured row, its summary per (configuration, lengths), the provenance both
    carry, and the repeatability figures."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    meta: Mapping[str, Any]
    stats: Mapping[str, Any]  # data/profile/stats.json
    headline: Mapping[str, Any]  # metrics/profile.json
    store: PartStore

    def line(self) -> str:
        """The stage's last line: rows, device, time and the median coefficients of variation."""
        s, h = self.stats, self.headline
        cv, adj = s["median_cv"], s["median_cv_drift_corrected"]
        on = s["device"] + (f" x {s['workers']} Ray workers" if s["executor"] == "ray" else "")
        return (f"profile_latency: {s['rows']} rows ({h['errors']} errors) on {on} in {h['wall_s']:.0f} s; "
                f"median CV vision {cv['vision_ms']:.1%}, prefill {cv['prefill_ms']:.1%}, "
                f"decode {cv['decode_ms_per_token']:.1%}; drift-corrected total {adj['total_ms']:.1%}")


def _executor(p: ProfileParams, grid: KnobGrid, tier_tokens: Mapping[str, int] | None, seed: int,
              decode: str) -> Any:
    """Where the rounds run: Ray workers (``executor: ray``) or this process on a runtime loaded here."""
    if p.executor == "ray":
        from knobctl.latency.ray_profiler import RayProfiler

        return RayProfiler(p, grid, tier_tokens, seed, decode)
    return LocalProfiler(load_profiled_runtime(p, tier_tokens, decode), grid, p, seed)


def profile_latency(own: Mapping[str, Any], grid: KnobGrid, model_section: Mapping[str, Any] | None, seed: int,
                    cache: str | Path) -> Profile:
    """Measure every case of the knobs grid not yet in the run's resume folder under ``cache``, then summarise.
    ``own`` is the ``profile_latency`` section (overrides applied); of ``model_section`` only :data:`MODEL_KEYS`
    are read."""
    p = ProfileParams.from_params(own)
    options = ModelParams.from_params({k: v for k, v in (model_section or {}).items() if k in MODEL_KEYS})
    with _executor(p, grid, options.tier_tokens, seed, options.decode) as executor:
        info = executor.describe()
        model_hash = checkpoint_hash(p.source)
        run_key = params_hash({"profile": {k: v for k, v in p.__dict__.items() if k not in EXECUTOR_KEYS},
                               "knobs": [k.label for k in grid.configs()], "seed": seed, "model": model_hash,
                               "tiers": info["tiers"], "columns": ROW_COLUMNS,
                               **({"decode": options.decode} if options.decode != "eager" else {})})
        store = PartStore(Path(cache) / run_key, flush_every=p.flush_every, columns=ROW_COLUMNS)
        start = time.perf_counter()
        rows = with_speed(executor.run(store))
    summary = summarize(rows)
    wall = time.perf_counter() - start
    meta = provenance(own, device=info["device"], device_type=info["device_type"], dtype=p.dtype,
                      model=p.source, model_hash=model_hash, batch_size=p.batch_size, seed=seed,
                      experts_implementation=info["experts_implementation"], decode=options.decode,
                      num_threads=info["num_threads"],
                      tiers=info["tiers"], rounds=p.rounds, warmup_rounds=p.warmup_rounds, executor=p.executor,
                      workers=info["workers"])
    cv, adj = median_cv(summary), median_cv(summary, "adj_cv")
    errors = int(rows["error"].notna().sum())
    stats = {"median_cv": cv, "median_robust_cv": median_cv(summary, "rcv"), "median_cv_drift_corrected": adj,
             "round_speed": round_speed(rows), "total_ms_median_range": [float(summary["total_ms_median"].min()),
                                                                          float(summary["total_ms_median"].max())],
             "device": meta["device"], "dtype": p.dtype, "rows": len(rows), "configurations": len(grid.configs()),
             "rounds": p.rounds, "executor": p.executor, "workers": len(info["workers"])}
    headline = {"median_cv_total": round(cv["total_ms"], 4), "median_cv_drift_corrected_total": round(adj["total_ms"], 4),
                "errors": errors, "wall_s": round(wall, 1)}
    return Profile(rows, summary, meta, stats, headline, store)


def write_profile(profile: Profile, out: str | Path, metrics: str | Path) -> None:
    """data/profile (the rows, their summary, stats.json: every part's repeatability and the run's size) and
    metrics/profile.json (the headline): all of them or none. The resume folder is removed once they are."""
    out = Path(out)
    PROFILE_ROWS.check(profile.rows, out / "latency.parquet")  # both checked before either is written
    PROFILE_SUMMARY.check(profile.summary, out / "summary.parquet")
    with output_set() as outs:
        write_parquet(outs.file(out / "latency.parquet"), profile.rows, profile.meta)
        write_parquet(outs.file(out / "summary.parquet"), profile.summary, profile.meta)
        write_json(outs.file(out / "stats.json"), profile.stats)
        write_json(outs.file(metrics), {"headline": profile.headline})
    profile.store.clear()
