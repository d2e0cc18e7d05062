"""Stage eval_base: the default model's VQA accuracy on the test split at the grid's corners."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import SOURCES, source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/base", help=SOURCES)
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--metrics", default="metrics/base_test.json")
    ap.add_argument("--plots", default="plots/base/test_corners.csv")
    args = ap.parse_args(argv)
    from knobctl.contracts import VQA_REQUESTS, read_table
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.base.evaluation import EvalParams, corner_frame, corner_headline, evaluate
    from knobctl.execution import use_threads
    from knobctl.io import write_csv_atomic, write_json_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.model.presets import ModelParams
    from knobctl.model.runtime import load_runtime
    from knobctl.model.screen import askable
    from knobctl.vqa.sources import select_samples

    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    own = EvalParams.from_params(section(params, "eval_base", args.params))
    use_threads(own.num_threads)
    model = ModelParams.from_params(section(params, "model", args.params))
    rt = load_runtime(args.model, device=own.device, block_order=model.block_order, tier_tokens=model.tier_tokens)
    rt.validate_grid(grid)
    seed = seed_of(params, args.params)
    test = read_table(Path(args.data) / "test.parquet", VQA_REQUESTS)
    test = select_samples(test, None if own.max_samples is None else min(own.max_samples, len(test)), seed, "test")
    picked = askable(rt, test, "eval_base")  # an image or question the model cannot take is counted, not run
    results = evaluate(rt, picked.asked, grid.corners(), batch_size=own.batch_size, desc="test corners",
                       images=picked.images)
    metrics = {"headline": {**corner_headline(results, grid.full, grid.smallest), "questions": len(picked.asked),
                            "error_samples": len(picked.errors)}}
    write_json_atomic(args.metrics, metrics)
    write_csv_atomic(args.plots, corner_frame(results))
    h = metrics["headline"]
    print(f"eval_base: test accuracy full {h['full_accuracy']:.3f}, smallest {h['smallest_accuracy']:.3f}, "
          f"corners {h['corner_min']:.3f}..{h['corner_max']:.3f}"
          + (f"; {h['error_samples']} samples the model cannot take, left out" if h["error_samples"] else ""))


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
