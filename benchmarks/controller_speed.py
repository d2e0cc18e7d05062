"""Rollouts per second of controller training: cached (tensor lookups) against online (the real model).

Both run in one process, interleaved per repeat, on the default tables (data/rollouts,
models/latency_estimator) and model (models/base):
* cached: `train_controller` for --steps steps at the default batch 128 x G 5, timed inside
  the loop (the evaluation at the end is not counted);
* online: the same kind of rollouts answered by the real model, one request per sampled
  (sample, configuration) cell, --cells of them (OnlineCells: answer, VQA score, measured ms).

--variants compares train_controller settings side by side, e.g.
'{"mask": {}, "no mask": {"fit_mask": false}}' (each one interleaved with the others per repeat).
The cached step always runs on the CPU (the controller is too small for a GPU to pay); --device
picks where the online model runs (auto: cuda if present).

    python benchmarks/controller_speed.py [--steps 400] [--cells 150] [--repeats 3] [--threads 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import pandas as pd
import torch

from knobctl.controller.reward import RewardWeights
from knobctl.controller.tables import build_tables
from knobctl.controller.training import TrainParams, train_controller
from knobctl.io import read_provenance
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.model.runtime import device_name, load_runtime
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.online import OnlineCells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--cells", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--device", default="cpu", help="where the online model runs: cpu, cuda or auto")
    ap.add_argument("--variants", default='{"cached": {}}', help="JSON: name -> train_controller overrides")
    args = ap.parse_args()
    base = build_tables(AccuracyTable.load("data/rollouts"), LatencyEstimator.load("models/latency_estimator"),
                        KnobGrid().configs())
    meta = read_provenance("data/rollouts/rollouts.parquet")
    split = pd.read_parquet(f"data/vqa/{meta['split']}.parquet").set_index("sample_id")
    rt = load_runtime(meta["model"], device=args.device)
    online = OnlineCells(rt, split.loc[base.sample_ids].reset_index(), base.configs)
    rng = np.random.default_rng(0)
    variants = json.loads(args.variants)
    rates: dict[str, list[float]] = {f"{v}_{t}t": [] for v in variants for t in args.threads} | {"online": []}
    for r in range(args.repeats):
        for t in args.threads:
            torch.set_num_threads(t)
            for name, overrides in variants.items():
                p = dataclasses.replace(TrainParams(steps=args.steps), **overrides)
                res = train_controller(base, p, RewardWeights(), seed=r, progress=False)
                rates[f"{name}_{t}t"].append(res.summary["rollouts_per_s"])
        torch.set_num_threads(max(args.threads))
        s = rng.integers(len(base.sample_ids), size=args.cells)
        c = rng.integers(len(base.configs), size=args.cells)
        start = time.perf_counter()
        online(s, c)
        rates["online"].append(args.cells / (time.perf_counter() - start))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:,.0f} rollouts/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    best = max(v for k, v in med.items() if k != "online")
    print(f"cached on {device_name(torch.device('cpu'))}, online on {device_name(rt.device)}: median "
          + ", ".join(f"{k} {v:,.0f}" for k, v in med.items())
          + f" rollouts/s; cached/online {best / med['online']:,.0f}x")


if __name__ == "__main__":
    main()
