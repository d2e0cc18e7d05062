"""Stage eval_base: the default model's VQA accuracy on the test split at the grid's corners."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import model_sources, source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/base", help=model_sources())
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--metrics", default="metrics/base_test.json")
    ap.add_argument("--plots", default="plots/base/test_corners.csv")
    args = ap.parse_args(argv)
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.base.evaluation import EvalParams, corners_on_test
    from knobctl.io import write_csv_atomic, write_json_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.model.presets import ModelParams

    run = corners_on_test(args.model, args.data, KnobGrid.from_params(section(params, "knobs", args.params)),
                       EvalParams.from_params(section(params, "eval_base", args.params)),
                       ModelParams.from_params(section(params, "model", args.params)), seed_of(params, args.params))
    write_json_atomic(args.metrics, run.metrics)
    write_csv_atomic(args.plots, run.corners)
    print(run.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
