"""Stage train_base: train the embedded default model -> models/base + metrics/base.json."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd

from knobctl.base_training import ModelParams, TrainBaseParams, evaluate, train_base
from knobctl.io import write_json_atomic
from knobctl.knobs import KnobGrid
from knobctl.params import load_params, section, seed_of
from knobctl.runtime import save_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/base")
    ap.add_argument("--metrics", default="metrics/base.json")
    ap.add_argument("--checkpoint", default=".knobctl_cache/train_base", help="resume folder (not a DVC output)")
    args = ap.parse_args()
    params = load_params(args.params)
    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    model = ModelParams.from_params(section(params, "model", args.params))
    own = TrainBaseParams.from_params(section(params, "train_base", args.params))
    if model.preset != "tiny":
        raise ValueError(f"model.preset={model.preset!r}: train_base trains only the tiny preset")
    t0 = time.perf_counter()
    train = pd.read_parquet(Path(args.data) / "train.parquet")
    val = pd.read_parquet(Path(args.data) / "val.parquet")
    rt, summary = train_base(train, grid, model, own, seed, checkpoint_dir=Path(args.checkpoint))
    if own.eval_max_samples and len(val) > own.eval_max_samples:
        val = val.sample(own.eval_max_samples, random_state=seed)
    results = evaluate(rt, val, grid.corners(), batch_size=own.eval_batch_size, desc="val corners")
    save_runtime(rt, args.out)
    full, small = results[grid.full.label], results[grid.smallest.label]
    accs = [r["accuracy"] for r in results.values()]
    summary.update(
        stage_seconds=round(time.perf_counter() - t0, 1),
        split="val",
        full_accuracy=full["accuracy"],
        smallest_accuracy=small["accuracy"],
        corner_range=[min(accs), max(accs)],
        corners=results,
    )
    write_json_atomic(args.metrics, summary)
    shutil.rmtree(args.checkpoint, ignore_errors=True)
    print(
        f"train_base: {own.steps} steps in {summary['stage_seconds']} s; val accuracy full {grid.full.label} "
        f"{full['accuracy']:.3f}, smallest {grid.smallest.label} {small['accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
