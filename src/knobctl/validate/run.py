"""The validate stage as two calls: :func:`validate_controller` checks every input against the knobs grid, rolls
out the test samples, measures (or resumes measuring) every request, and summarises; :func:`write_validation`
writes the requests, the baselines' choices, the summary, the metrics and the plots.

A run is resumable: requests are flushed per chunk of samples to a cache folder keyed by everything that
determines them (params, seed, model, controller, test split, estimator), and a rerun with the same inputs
measures only the samples not done yet. Only the knobs grid, the seed, ``model.block_order``, ``model.tier_tokens``
and ``model.decode`` are read beside the ``validate`` section: the keys dvc.yaml lists for the stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from knobctl.contracts import VALIDATE_REQUESTS, VQA_REQUESTS, read_table
from knobctl.controller.policy import Controller, trained_with
from knobctl.controller.probe import Probe
from knobctl.controller.tables import CacheTables, build_tables
from knobctl.execution import use_threads
from knobctl.io import checkpoint_hash, file_hash, output_set, params_hash, provenance, write_json, write_parquet
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.model.presets import ModelParams
from knobctl.model.runtime import Runtime, device_name, load_runtime
from knobctl.params import InputError
from knobctl.parts import PartStore
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.measures import signed
from knobctl.table.rollouts import RolloutParams, rollout_part
from knobctl.validate.measure import ValidateParams, run_validation
from knobctl.validate.plots import write_plots
from knobctl.validate.summary import summarize, validation_metrics
from knobctl.vqa.sources import select_samples

#: The keys of the ``model`` section validate reads (dvc.yaml lists the same).
MODEL_KEYS = ("block_order", "tier_tokens", "decode")


@dataclass(frozen=True)
class ValidateInputs:
    """Where validate reads from: the model, the controller (with its probe), the latency estimator, the val
    accuracy table, the VQA splits, and the resume folder."""

    model: str = "models/base"
    controller: str = "models/controller"
    estimator: str = "models/latency_estimator"
    rollouts: str = "data/rollouts"
    data: str = "data/vqa"
    cache: str = ".knobctl_cache/validate"


@dataclass(frozen=True)
class Validation:
    """A finished validation: the measured requests, the baselines' choices, the summary (every number) and the
    provenance its files carry."""

    requests: pd.DataFrame
    chosen: pd.DataFrame
    full: Mapping[str, Any]  # :func:`knobctl.validate.summary.summarize`
    meta: Mapping[str, Any]
    test: CacheTables
    store: PartStore
    seconds: float
    errors: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "question_type", "error"]))

    def table(self) -> pd.DataFrame:
        """data/validate/requests.parquet: the measured requests, then one row of kind ``error`` per sample that
        failed, its reason in ``request_error``."""
        if not len(self.errors):
            return self.requests
        failed = self.errors.rename(columns={"error": "request_error"}).assign(kind="error")
        return pd.concat([self.requests, failed], ignore_index=True)

    def line(self) -> str:
        """The stage's last line: the headline against lookup and random, violations, overhead, clock vs estimate."""
        s = self.full["summary"]
        failed = f" ({s['error_samples']} more failed: error rows)" if s.get("error_samples") else ""
        return (f"validate: {s['requests']} requests on {s['samples']} samples{failed} in {self.seconds:.0f} s; within "
                "budget: "
                f"not below lookup at {s['budgets_not_below_lookup_within_budget']} of {s['budgets_with_lookup']} "
                f"budgets, mean gain {signed(s['mean_gain_over_lookup_within_budget'])} "
                f"[{signed(s['mean_gain_over_lookup_within_budget_ci95_low'])}, "
                f"{signed(s['mean_gain_over_lookup_within_budget_ci95_high'])}], above random at "
                f"{s['budgets_above_random_where_choice']} of {s['budgets_with_choice']} budgets with a choice; "
                f"worst violation rate {s['worst_violation_rate']:.1%}, controller overhead "
                f"{s['controller_overhead_ms']:.2f} ms ({s['controller_overhead_share']:.1%}), measured/estimated "
                f"latency {s['measured_over_estimated_median']:.2f}x")


def load_checked(inputs: ValidateInputs, grid: KnobGrid) -> tuple[Controller, Probe, AccuracyTable]:
    """The controller, its probe and the val table, each refused unless it speaks the knobs grid, before any
    request is timed. Configurations the val table lacks are named on stderr: static and lookup never pick them."""
    ctrl = Controller.load(inputs.controller)
    ctrl.check_grid(grid, inputs.controller)
    probe = Probe.load(inputs.controller)
    if len(probe.bias) != len(grid.configs()):
        raise ValueError(f"{inputs.controller}'s probe covers {len(probe.bias)} configurations, the knobs grid "
                         f"{len(grid.configs())}; rerun train_controller (`dvc repro train_controller`)")
    val = AccuracyTable.load(inputs.rollouts)
    # static and lookup choose on the val table: they can never pick what it lacks
    val.check_grid(grid, inputs.rollouts, "validate", "static and lookup never choose them, the controller and the "
                   "probe may")
    return ctrl, probe, val


def run_key(p: ValidateParams, seed: int, rt: Runtime, inputs: ValidateInputs, split_path: Path) -> str:
    """The resume folder's name: a hash of everything that determines the requests."""
    return params_hash({"validate": p.__dict__, "seed": seed, "model": checkpoint_hash(inputs.model),
                        "block_order": rt.spec.block_order_json, "tiers": rt.tier_table(),
                        "controller": checkpoint_hash(inputs.controller), "data": file_hash(split_path),
                        "estimator": {f.name: file_hash(f) for f in sorted(Path(inputs.estimator).iterdir())},
                        # the clock depends on the decode path; eager adds nothing, so earlier resume folders still match
                        **({"decode": rt.decoder.path} if rt.decoder is not None else {})})


def validate_controller(own: Mapping[str, Any], grid: KnobGrid, model_section: Mapping[str, Any], seed: int,
                        inputs: ValidateInputs = ValidateInputs()) -> Validation:
    """The whole validation (module docstring). ``own`` is the ``validate`` section (overrides applied),
    ``model_section`` params' ``model`` section, of which only :data:`MODEL_KEYS` are read."""
    p = ValidateParams.from_params(own)
    use_threads(p.num_threads)
    ctrl, probe, val_table = load_checked(inputs, grid)
    est = LatencyEstimator.load(inputs.estimator)
    options = ModelParams.from_params({k: model_section[k] for k in MODEL_KEYS if k in model_section})
    rt = load_runtime(inputs.model, device=p.device, block_order=options.block_order, tier_tokens=options.tier_tokens,
                      decode=options.decode)
    rt.validate_grid(grid)
    split_path = Path(inputs.data) / "test.parquet"
    samples = select_samples(read_table(split_path, VQA_REQUESTS), p.num_samples, seed, "test",
                             key="validate.num_samples")
    start = time.perf_counter()
    # Every configuration on these test samples, the accuracy table's way: the oracle's and the probe's choices
    # and each request's estimate read them.
    rows, feats = rollout_part(rt, samples, grid.configs(), RolloutParams(
        split="test", num_samples=p.num_samples, batch_size=p.batch_size, part_size=p.num_samples,
        max_image_pixels=p.max_image_pixels, max_question_tokens=p.max_question_tokens), section="validate")
    errors = failed_samples(rows)
    if len(errors) == len(samples):
        raise InputError(f"every one of the {len(samples)} test samples failed, e.g. {errors['sample_id'].iloc[0]}: "
                         f"{errors['error'].iloc[0]}; fix the test split or the caps (validate.max_image_pixels, "
                         "max_question_tokens)")
    # A failed sample is asked of no method: the others are measured as if it were not in the split.
    samples = samples[~samples["sample_id"].isin(errors["sample_id"])].reset_index(drop=True)
    test = build_tables(AccuracyTable.from_frames(rows, feats), est, grid.configs())
    val = build_tables(val_table, est, grid.configs())
    store = PartStore(Path(inputs.cache) / run_key(p, seed, rt, inputs, split_path), flush_every=10**9)
    requests, chosen, budgets, calibration = run_validation(rt, ctrl, samples, test, val, p, seed, store, probe=probe)
    VALIDATE_REQUESTS.check(requests, store.directory)
    meta = provenance(own, device=device_name(rt.device), model=inputs.model, controller=inputs.controller, seed=seed,
                      samples=len(samples), budgets=list(budgets), controller_hash=checkpoint_hash(inputs.controller),
                      controller_trained_with=trained_with(inputs.controller), error_samples=len(errors))
    full = summarize(requests, chosen, budgets, calibration, error_samples=len(errors))
    return Validation(requests, chosen, full, meta, test, store, time.perf_counter() - start, errors)


def failed_samples(rows: pd.DataFrame) -> pd.DataFrame:
    """The samples of a rollout part whose every row is an error row: sample_id, question_type and the error."""
    failed = rows["error"].notna().groupby(rows["sample_id"], sort=False).transform("all")
    return (rows.loc[failed, ["sample_id", "question_type", "error"]].drop_duplicates("sample_id")
            .reset_index(drop=True))


def write_validation(v: Validation, out: str | Path, metrics: str | Path, plots: str | Path) -> None:
    """data/validate (requests, baselines, summary.json), metrics/validate.json and plots/validate, all of them or
    none; the resume folder is removed once they are written."""
    out = Path(out)
    table = VALIDATE_REQUESTS.check(v.table(), out / "requests.parquet")
    with output_set() as outs:  # the measurements and their summaries: all of them or none
        write_parquet(outs.file(out / "requests.parquet"), table, v.meta)
        write_parquet(outs.file(out / "baselines.parquet"), v.chosen, v.meta)
        write_json(outs.file(out / "summary.json"), v.full)
        write_json(outs.file(metrics), validation_metrics(v.full))
        write_plots(v.requests, v.chosen, v.test, outs.dir(Path(plots)), v.full)
    v.store.clear()
