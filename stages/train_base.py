"""Stage train_base: train the embedded default model -> models/base + metrics/base.json.

With ``model.source`` (a local checkpoint folder, as --help lists) nothing is trained: models/base records
that folder (knobctl_source.json, which every later stage follows) and the metrics score it at the grid's
corners on val.

model.source is
{model sources}."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/base")
    ap.add_argument("--metrics", default="metrics/base.json")
    ap.add_argument("--plots", default="plots/base/val_corners.csv")
    ap.add_argument("--summary", default="plots/base/train_base.json", help="the run's figures beyond the headline")
    ap.add_argument("--checkpoint", default=".knobctl_cache/train_base", help="resume folder (not a DVC output)")
    args = ap.parse_args(argv)
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.base.build import build_base, write_base
    from knobctl.knobs import KnobGrid

    model = build_base(section(params, "train_base", args.params), KnobGrid.from_params(section(params, "knobs",
                       args.params)), section(params, "model", args.params), seed_of(params, args.params),
                       data=args.data, out=args.out, checkpoint=args.checkpoint)
    write_base(model, out=args.out, metrics=args.metrics, summary=args.summary, plots=args.plots,
               checkpoint=args.checkpoint)
    print(model.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
