"""Inference latency per HF experts kernel, side by side in one run (batch 1, the profiler's harness).

    python benchmarks/decode_kernels.py [--model models/base] [--rounds 7]

Each kernel gets its own runtime; every round runs every (kernel, configuration) once in a
shuffled order; medians over rounds. Shows which kernel makes which knob pay on this machine.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from knobctl.knobs import KnobConfig
from knobctl.latency.profiling import Case, RuntimeMeasurer
from knobctl.model.runtime import load_runtime

CONFIGS = [KnobConfig("high", 8, 16), KnobConfig("high", 4, 16), KnobConfig("high", 8, 12), KnobConfig("low", 4, 12)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--kernels", default="eager,grouped_mm,batched_mm")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    kernels = args.kernels.split(",")
    measurers = {k: RuntimeMeasurer(load_runtime(args.model, device="cpu", experts_implementation=k), 1, 64, 0)
                 for k in kernels}
    jobs = [(k, c) for k in kernels for c in CONFIGS]
    rows = []
    for r in range(-1, args.rounds):  # round -1 is warm-up
        for i in np.random.default_rng([0, r + 1]).permutation(len(jobs)):
            kernel, knobs = jobs[i]
            t = measurers[kernel](Case(knobs, text_tokens=10, output_tokens=6))
            if r >= 0:
                rows.append({"kernel": kernel, "config": knobs.label, "prefill_ms": t.prefill_ms,
                             "decode_ms_per_token": t.decode_ms_per_token})
    df = pd.DataFrame(rows).groupby(["config", "kernel"], sort=False).median().unstack("kernel")
    print(df.round(2).to_string())
    dec = df["decode_ms_per_token"]
    print("decode_kernels: decode ms/token at high/k8/b16: " +
          ", ".join(f"{k} {dec.loc['high/k8/b16', k]:.2f}" for k in kernels) +
          "; top-k 8 -> 4 saves " + ", ".join(
              f"{k} {1 - dec.loc['high/k4/b16', k] / dec.loc['high/k8/b16', k]:.0%}" for k in kernels))


if __name__ == "__main__":
    main()
