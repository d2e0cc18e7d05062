"""Stage report: reports/summary.md from the summaries and plots of the pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--validation", default="data/validate/summary.json", help="validate's full per-budget summary")
    ap.add_argument("--training", default="plots/train/training.json", help="train_controller's figures and goals")
    ap.add_argument("--table", default="data/rollouts/summary.json", help="the accuracy table's summary")
    ap.add_argument("--estimator", default="metrics/estimator.json", help="the latency estimator's headline")
    ap.add_argument("--tradeoff", default="plots/tradeoff/tradeoff.json", help="the tradeoff stage's full section")
    ap.add_argument("--out", default="reports/summary.md")
    args = ap.parse_args(argv)
    from knobctl.io import atomic_path
    from knobctl.validate.report import render
    from knobctl.weights import load_json

    def load(path: str) -> dict | None:
        return load_json(path, "rerun the stage that writes it (`dvc repro`)") if Path(path).exists() else None

    validation = load(args.validation)
    if validation is None:
        raise FileNotFoundError(f"{args.validation} not found; run `dvc repro validate` first")
    text = render(validation, train=load(args.training), table=load(args.table), estimator=load(args.estimator),
                  tradeoff=load(args.tradeoff))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(f"report: wrote {args.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
