"""Stage block_importance: what dropping each transformer block costs, and the block order it implies.

Writes data/block_importance/importance.json, whose `order` key `model.block_order` (or
`load_runtime(..., block_order=PATH)`) accepts, and metrics/block_importance.json. Runs on any
checkpoint or preset, e.g.:
    python stages/block_importance.py --set source=/path/to/checkpoint num_samples=200
where source is
{model sources}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override block_importance keys (YAML values), e.g. source=models/base num_samples=100")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="data/block_importance/importance.json")
    ap.add_argument("--metrics", default="metrics/block_importance.json")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    seed = seed_of(params, args.params)
    own = apply_overrides(section(params, "block_importance", args.params), args.set, "block_importance")

    from knobctl.base.importance_run import run_importance
    from knobctl.io import write_json_atomic
    from knobctl.knobs import KnobGrid
    from knobctl.model.presets import ModelParams

    run = run_importance(own, KnobGrid.from_params(section(params, "knobs", args.params)),
                         ModelParams.from_params(params.get("model") or {}).tier_tokens, seed, args.data)
    write_json_atomic(args.out, run.result)
    write_json_atomic(args.metrics, run.metrics)
    print(run.line)


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
