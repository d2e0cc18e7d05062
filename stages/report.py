"""Stage report: reports/summary.md from the metrics and plots of the pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics", default="metrics")
    ap.add_argument("--validation", default="data/validate/summary.json", help="validate's full per-budget summary")
    ap.add_argument("--tradeoff", default="plots/tradeoff/tradeoff.json", help="the tradeoff stage's full section")
    ap.add_argument("--out", default="reports/summary.md")
    args = ap.parse_args(argv)
    from knobctl.io import atomic_path
    from knobctl.validate.report import render

    def load(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.exists() else None

    validation = load(Path(args.validation))
    if validation is None:
        raise FileNotFoundError(f"{args.validation} not found; run `dvc repro validate` first")
    metrics = Path(args.metrics)
    text = render(validation, train=load(metrics / "train.json"), table=load(metrics / "accuracy_table.json"),
                  estimator=load(metrics / "estimator.json"), tradeoff=load(Path(args.tradeoff)))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(f"report: wrote {args.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
