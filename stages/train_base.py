"""Stage train_base: train the embedded default model -> models/base + metrics/base.json.

With ``model.source`` (a local checkpoint folder: knobctl's own format, or a Qwen3-VL-MoE / GLM-4.5V
folder as downloaded from the hub) nothing is trained: models/base records that folder (knobctl_source.json,
which every later stage follows) and the metrics score it at the grid's corners on val."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/base")
    ap.add_argument("--metrics", default="metrics/base.json")
    ap.add_argument("--plots", default="plots/base/val_corners.csv")
    ap.add_argument("--checkpoint", default=".knobctl_cache/train_base", help="resume folder (not a DVC output)")
    args = ap.parse_args(argv)
    from knobctl.contracts import VQA_SPLIT, read_table
    from knobctl.params import ParamsError, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.base.evaluation import corner_frame, corner_headline, evaluate
    from knobctl.base.training import TrainBaseParams, train_base
    from knobctl.execution import use_threads
    from knobctl.io import write_csv_atomic, write_json_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.model.checkpoint import write_source
    from knobctl.model.presets import ModelParams
    from knobctl.model.runtime import load_runtime, save_runtime

    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    model = ModelParams.from_params(section(params, "model", args.params))
    own = TrainBaseParams.from_params(section(params, "train_base", args.params))
    if model.source is None and model.preset != "tiny":
        raise ParamsError(f"model.preset={model.preset!r}: train_base trains only the tiny preset; set model.source "
                          "to use a checkpoint folder")
    if model.source is not None and not Path(model.source).is_dir():
        raise ParamsError(f"model.source={model.source!r} is not a folder; download the checkpoint there (README.md, "
                          "'Your own model') or set model.source: null to train the tiny preset")
    use_threads(own.num_threads)
    t0 = time.perf_counter()
    val = read_table(Path(args.data) / "val.parquet", VQA_SPLIT)
    if own.eval_max_samples and len(val) > own.eval_max_samples:
        val = val.sample(own.eval_max_samples, random_state=seed)
    if model.source is not None:
        adopted = write_source(Path(args.out), Path(model.source))
        rt = load_runtime(args.out, tier_tokens=model.tier_tokens)
        rt.validate_grid(grid)
        summary = {"final_loss": None, "adopted": adopted}
    else:
        train = read_table(Path(args.data) / "train.parquet", VQA_SPLIT)
        rt, summary = train_base(train, grid, model, own, seed, checkpoint_dir=Path(args.checkpoint))
    results = evaluate(rt, val, grid.corners(), batch_size=own.eval_batch_size, desc="val corners")
    if model.source is None:
        save_runtime(rt, args.out)
    # The run's few numbers; every corner and question type is in the CSV.
    metrics = {"headline": {**corner_headline(results, grid.full, grid.smallest), "final_loss": summary["final_loss"]},
               **{k: v for k, v in summary.items() if k not in ("final_loss", "train_seconds_this_run")},
               "stage_seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(args.metrics, metrics)
    write_csv_atomic(args.plots, corner_frame(results))
    shutil.rmtree(args.checkpoint, ignore_errors=True)
    h = metrics["headline"]
    done = f"adopted {model.source}" if model.source is not None else f"{own.steps} steps"
    print(f"train_base: {done} in {metrics['stage_seconds']} s; val accuracy full {grid.full.label} "
          f"{h['full_accuracy']:.3f}, smallest {grid.smallest.label} {h['smallest_accuracy']:.3f}")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
