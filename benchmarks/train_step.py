"""Seconds per training step of the tiny model, per experts kernel, measured side by side.

python benchmarks/train_step.py [--steps 8] [--batch-size 128]
Interleaves the kernels round by round and reports the median step time of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from knobctl.base.training import batch_loss, build_tiny, encode_split
from knobctl.knobs import KnobConfig
from knobctl.model.presets import ModelParams
from knobctl.params import load_params, section
from knobctl.vqa.sources import DataParams, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--kernels", default="eager,grouped_mm,batched_mm")
    args = ap.parse_args()
    model = ModelParams.from_params(section(load_params(), "model"))
    train = prepare(DataParams(max_train_images=400, max_test_images=2), seed=0)["train"]
    kernels = args.kernels.split(",")
    runtimes = {}
    for k in kernels:
        rt = build_tiny(train, ModelParams(**{**model.__dict__, "experts_implementation": k}), seed=0)
        rt.model.train()
        runtimes[k] = (rt, encode_split(rt, train, size=64), torch.optim.AdamW(rt.model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {k: [] for k in kernels}
    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps + 2):
        rows = torch.randint(0, len(train), (args.batch_size,), generator=gen).numpy()
        for k in kernels:
            rt, data, opt = runtimes[k]
            t0 = time.perf_counter()
            loss = batch_loss(rt, data, rows, KnobConfig("high", 8, 16))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step >= 2:  # warm-up rounds
                times[k].append(time.perf_counter() - t0)
    for k in kernels:
        print(f"{k:>11}: median {statistics.median(times[k]):.3f} s/step at (high, 8, 16), batch {args.batch_size}")


if __name__ == "__main__":
    main()
