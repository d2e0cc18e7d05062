"""Stage prepare_data: a VQA source -> data/vqa/{train,val,test}.parquet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/vqa")
    args = ap.parse_args(argv)
    from knobctl.params import load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.contracts import VQA_SPLIT
    from knobctl.io import atomic_dir, provenance, write_parquet_atomic
    from knobctl.vqa.sources import SPLITS, DataParams, prepare

    own = section(params, "prepare_data", args.params)
    seed = seed_of(params, args.params)
    p = DataParams.from_params(own)
    tables = prepare(p, seed)
    meta = provenance({"prepare_data": own, "seed": seed}, volatile=False, libraries=("numpy", "pillow", "pyarrow"),
                      host=False, source=p.source)
    for split in SPLITS:  # the contract every later stage reads them with
        VQA_SPLIT.check(tables[split], Path(args.out) / f"{split}.parquet")
    with atomic_dir(args.out) as tmp:  # all three splits or none
        for split in SPLITS:
            write_parquet_atomic(tmp / f"{split}.parquet", tables[split], {**meta, "split": split})
    counts = {s: {"questions": len(t), "images": int(t["image_id"].nunique())} for s, t in tables.items()}
    print(f"prepare_data: wrote {args.out}: {json.dumps(counts)}")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
