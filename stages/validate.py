"""Stage validate: the controller on the real model with real clocks, against baselines, per budget.

Resumable: requests are flushed per chunk of samples to .knobctl_cache/validate/<hash>/,
and a rerun with the same inputs measures only the samples not done yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.params import MODEL_SOURCES  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override validate keys")
    ap.add_argument("--model", default="models/base", help=MODEL_SOURCES)
    ap.add_argument("--controller", default="models/controller")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="data/validate")
    ap.add_argument("--metrics", default="metrics/validate.json")
    ap.add_argument("--plots", default="plots/validate")
    ap.add_argument("--cache", default=".knobctl_cache/validate")
    args = ap.parse_args(argv)
    from knobctl.contracts import VQA_SPLIT, read_table
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.controller.policy import Controller, trained_with
    from knobctl.controller.probe import Probe
    from knobctl.controller.tables import build_tables
    from knobctl.execution import use_threads
    from knobctl.io import (
        checkpoint_hash,
        file_hash,
        params_hash,
        provenance,
        write_json_atomic,
        write_parquet_atomic,
    )
    from knobctl.knobs import KnobGrid
    from knobctl.latency.estimator import LatencyEstimator
    from knobctl.model.presets import ModelParams
    from knobctl.model.runtime import device_name, load_runtime
    from knobctl.parts import PartStore
    from knobctl.table.accuracy_table import AccuracyTable
    from knobctl.table.rollouts import RolloutParams, rollout_part
    from knobctl.validate.measure import ValidateParams, run_validation
    from knobctl.validate.plots import write_plots
    from knobctl.validate.summary import summarize, validation_metrics
    from knobctl.vqa.sources import select_samples

    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    own = apply_overrides(section(params, "validate", args.params), args.set, "validate")
    p = ValidateParams.from_params(own)
    use_threads(p.num_threads)
    # Every input must speak the params' knob grid before any request is timed.
    ctrl = Controller.load(args.controller)
    ctrl.check_grid(grid, args.controller)
    probe = Probe.load(args.controller)
    if len(probe.bias) != len(grid.configs()):
        raise ValueError(f"{args.controller}'s probe covers {len(probe.bias)} configurations, the knobs grid "
                         f"{len(grid.configs())}; rerun train_controller (`dvc repro train_controller`)")
    val_table = AccuracyTable.load(args.rollouts)
    val_table.check_grid(grid, args.rollouts)
    absent = [k.label for k in grid.configs() if k not in set(val_table.configs)]
    if absent:  # static and lookup choose on the val table: they can never pick what it lacks
        print(f"validate: {len(absent)} configurations of the knobs grid are not in {args.rollouts} (first: "
              f"{absent[0]}); static and lookup never choose them, the controller and the probe may",
              file=sys.stderr)
    est = LatencyEstimator.load(args.estimator)
    model = ModelParams.from_params(section(params, "model", args.params))
    rt = load_runtime(args.model, device=p.device, block_order=model.block_order, tier_tokens=model.tier_tokens)
    rt.validate_grid(grid)
    split_path = Path(args.data) / "test.parquet"
    samples = select_samples(read_table(split_path, VQA_SPLIT), p.num_samples, seed, "test", key="validate.num_samples")
    start = time.perf_counter()
    # The oracle's accuracy: every configuration on these test samples, the accuracy table's way.
    rows, feats = rollout_part(rt, samples, grid.configs(), RolloutParams(
        split="test", num_samples=p.num_samples, batch_size=p.batch_size, part_size=p.num_samples))
    test = build_tables(AccuracyTable.from_frames(rows, feats), est, grid.configs())
    val = build_tables(val_table, est, grid.configs())
    run_key = params_hash({"validate": p.__dict__, "seed": seed, "model": checkpoint_hash(args.model),
                           "block_order": rt.spec.block_order_json, "tiers": rt.tier_table(),
                           "controller": checkpoint_hash(args.controller), "data": file_hash(split_path),
                           "estimator": {f.name: file_hash(f) for f in sorted(Path(args.estimator).iterdir())}})
    store = PartStore(Path(args.cache) / run_key, flush_every=10**9)  # flushed per chunk of samples
    requests, chosen, budgets, calibration = run_validation(rt, ctrl, samples, test, val, p, seed, store, probe=probe)
    full = summarize(requests, chosen, budgets, calibration)
    meta = provenance(own, device=device_name(rt.device), model=args.model, controller=args.controller, seed=seed,
                      samples=len(samples), budgets=list(budgets), controller_hash=checkpoint_hash(args.controller),
                      controller_trained_with=trained_with(args.controller))
    out = Path(args.out)
    write_parquet_atomic(out / "requests.parquet", requests, meta)
    write_parquet_atomic(out / "baselines.parquet", chosen, meta)
    write_json_atomic(out / "summary.json", full)
    write_json_atomic(args.metrics, validation_metrics(full))
    write_plots(requests, chosen, test, Path(args.plots))
    store.clear()
    s = full["summary"]
    print(f"validate: {s['requests']} requests on {s['samples']} samples in {time.perf_counter() - start:.0f} s; "
          f"within budget: not below lookup at {s['budgets_not_below_lookup_within_budget']} of "
          f"{s['budgets_with_lookup']} budgets, mean gain {_signed(s['mean_gain_over_lookup_within_budget'])} "
          f"[{_signed(s['mean_gain_over_lookup_within_budget_ci95_low'])}, "
          f"{_signed(s['mean_gain_over_lookup_within_budget_ci95_high'])}], above random at "
          f"{s['budgets_above_random_where_choice']} of {s['budgets_with_choice']} budgets with a choice; "
          f"worst violation rate {s['worst_violation_rate']:.1%}, controller overhead "
          f"{s['controller_overhead_ms']:.2f} ms ({s['controller_overhead_share']:.1%}), measured/estimated latency "
          f"{s['measured_over_estimated_median']:.2f}x")

def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
