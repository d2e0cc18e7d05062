"""Stage eval_base: the default model's VQA accuracy on the test split at the grid's corners."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from knobctl.base_training import evaluate
from knobctl.io import write_json_atomic
from knobctl.knobs import KnobGrid
from knobctl.params import load_params, section
from knobctl.runtime import load_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--metrics", default="metrics/base_test.json")
    args = ap.parse_args()
    params = load_params(args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    own = section(params, "eval_base", args.params)
    batch_size = int(own.get("batch_size", 256))
    rt = load_runtime(args.model, device=own.get("device", "auto"))
    test = pd.read_parquet(Path(args.data) / "test.parquet")
    results = evaluate(rt, test, grid.corners(), batch_size=batch_size, desc="test corners")
    accs = {label: r["accuracy"] for label, r in results.items()}
    write_json_atomic(
        args.metrics,
        {
            "split": "test",
            "full_accuracy": accs[grid.full.label],
            "smallest_accuracy": accs[grid.smallest.label],
            "corner_range": [min(accs.values()), max(accs.values())],
            "corners": results,
        },
    )
    print(
        f"eval_base: test accuracy full {accs[grid.full.label]:.3f}, smallest {accs[grid.smallest.label]:.3f}, "
        f"corners {min(accs.values()):.3f}..{max(accs.values()):.3f}"
    )


if __name__ == "__main__":
    main()
