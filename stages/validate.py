"""Stage validate: the controller on the real model with real clocks, against baselines, per budget.

Resumable: requests are flushed per chunk of samples to .knobctl_cache/validate/<hash>/,
and a rerun with the same inputs measures only the samples not done yet.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import model_sources, source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override validate keys")
    ap.add_argument("--model", default="models/base", help=model_sources())
    ap.add_argument("--controller", default="models/controller")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="data/validate")
    ap.add_argument("--metrics", default="metrics/validate.json")
    ap.add_argument("--plots", default="plots/validate")
    ap.add_argument("--cache", default=".knobctl_cache/validate")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.knobs import KnobGrid
    from knobctl.validate.run import ValidateInputs, validate_controller, write_validation

    own = apply_overrides(section(params, "validate", args.params), args.set, "validate")
    inputs = ValidateInputs(args.model, args.controller, args.estimator, args.rollouts, args.data, args.cache)
    result = validate_controller(own, KnobGrid.from_params(section(params, "knobs", args.params)),
                                 section(params, "model", args.params), seed_of(params, args.params), inputs)
    write_validation(result, args.out, args.metrics, args.plots)
    print(result.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
