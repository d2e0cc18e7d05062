"""Check data/rollouts against an independent evaluation of the same samples through rt.answer.

For each named configuration (default: the full one, the smallest and one in between) it
scores the table's samples with knobctl.base.training.evaluate (rt.answer in batches of 256,
then the VQA metric) and compares with the table's mean score, in points, and answer by answer.

    python benchmarks/accuracy_table_check.py [--configs high/k8/b16 low/k4/b12 medium/k6/b14]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from knobctl.base.evaluation import evaluate
from knobctl.io import read_provenance
from knobctl.knobs import KnobConfig
from knobctl.model.runtime import load_runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="data/rollouts/rollouts.parquet")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--configs", nargs="*", default=["high/k8/b16", "low/k4/b12", "medium/k6/b14"])
    ap.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = ap.parse_args()
    meta = read_provenance(args.table)
    rows = pd.read_parquet(args.table)
    split = pd.read_parquet(Path(args.data) / f"{meta['split']}.parquet").set_index("sample_id")
    ids = rows["sample_id"].drop_duplicates().tolist()
    df = split.loc[ids].reset_index()
    rt = load_runtime(meta["model"])
    report = {}
    for label in args.configs:
        tier, k, b = label.split("/")
        cfg = KnobConfig(tier, int(k[1:]), int(b[1:]))
        independent = evaluate(rt, df, [cfg], desc=label)[label]["accuracy"]
        table = rows.loc[rows["config"] == label].set_index("sample_id").loc[ids]
        preds = rt.answer(df["image"].tolist(), df["question"].tolist(), cfg, batch_size=256)
        differ = int(sum(p != q for p, q in zip(preds, table["prediction"])))
        report[label] = {"table": round(float(table["score"].mean()), 4), "rt_answer": independent,
                         "diff_points": round(100 * (float(table["score"].mean()) - independent), 2),
                         "answers_that_differ": differ, "samples": len(ids)}
        print(f"{label}: table {report[label]['table']:.4f}, rt.answer {independent:.4f}, "
              f"diff {report[label]['diff_points']:+.2f} points, {differ} of {len(ids)} answers differ")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
