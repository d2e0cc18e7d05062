"""Rollouts per second: the accuracy table's shared-work path against rt.answer per configuration.

Both answer the same val samples under the same configurations at the same batch size,
interleaved (shared, naive, shared, naive, ...), so a slow spell of the machine hits both.
Prints each repeat, the medians and the ratio, and checks that both give the same answers.

    python benchmarks/rollouts_speed.py [--samples 250] [--repeats 3] [--model models/base]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from knobctl.knobs import KnobGrid
from knobctl.model.runtime import device_name, load_runtime
from knobctl.table.rollouts import RolloutParams, rollout_part
from knobctl.vqa.sources import decode_images, select_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/vqa/val.parquet")
    ap.add_argument("--samples", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rt = load_runtime(args.model)
    samples = select_samples(pd.read_parquet(args.data), args.samples, seed=0)
    configs = KnobGrid().configs()
    p = RolloutParams(batch_size=args.batch_size)
    images = torch.from_numpy(decode_images(samples["image"].tolist(), size=rt.config.vision_config.image_size))
    questions = samples["question"].tolist()
    n = len(samples) * len(configs)
    rates: dict[str, list[float]] = {"shared": [], "naive": []}
    for r in range(args.repeats):
        t = time.perf_counter()
        rows, _ = rollout_part(rt, samples, configs, p)
        rates["shared"].append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        naive = {k.label: rt.answer(images, questions, k, batch_size=args.batch_size) for k in configs}
        rates["naive"].append(n / (time.perf_counter() - t))
        same = all(rows.loc[rows["config"] == label, "prediction"].tolist() == preds for label, preds in naive.items())
        print(f"repeat {r}: shared {rates['shared'][-1]:.0f} rollouts/s, naive {rates['naive'][-1]:.0f} rollouts/s, "
              f"same answers: {same}")
    shared, naive_rate = statistics.median(rates["shared"]), statistics.median(rates["naive"])
    print(f"{device_name(rt.device)}: {len(samples)} samples x {len(configs)} configs, batch {args.batch_size}: "
          f"median shared {shared:.0f} rollouts/s, naive {naive_rate:.0f} rollouts/s, ratio {shared / naive_rate:.2f}x; "
          f"2,000 x 75 at the shared rate: {2000 * 75 / shared:.0f} s")


if __name__ == "__main__":
    main()
