"""Stage report: reports/summary.md from the metrics and plots of the pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knobctl.io import atomic_path
from knobctl.report import render


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics", default="metrics")
    ap.add_argument("--out", default="reports/summary.md")
    args = ap.parse_args()

    def load(name: str) -> dict | None:
        path = Path(args.metrics) / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    text = render(load("validate"), train=load("train"), table=load("accuracy_table"), estimator=load("estimator"))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(f"report: wrote {args.out} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
