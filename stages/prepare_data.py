"""Stage prepare_data: a VQA source -> data/vqa/{train,val,test}.parquet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from knobctl.data import SPLITS, DataParams, prepare
from knobctl.io import provenance, write_parquet_atomic
from knobctl.params import load_params, section, seed_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/vqa")
    args = ap.parse_args()
    params = load_params(args.params)
    own = section(params, "prepare_data", args.params)
    seed = seed_of(params, args.params)
    tables = prepare(DataParams.from_params(own), seed)
    meta = provenance({"prepare_data": own, "seed": seed}, volatile=False, source=own.get("source", "easy_vqa"))
    for split in SPLITS:
        write_parquet_atomic(Path(args.out) / f"{split}.parquet", tables[split], {**meta, "split": split})
    counts = {s: {"questions": len(t), "images": int(t["image_id"].nunique())} for s, t in tables.items()}
    print(f"prepare_data: wrote {args.out}: {json.dumps(counts)}")


if __name__ == "__main__":
    main()
