"""What the controller costs per request: the two-stage flow against the same knobs run directly.

For --samples test samples and --budgets budgets (spread over the estimated latency range),
each repeat runs, interleaved per request: the two-stage flow (`answer_controlled`, which
records its controller time) and then `answer_fixed` with the knobs it chose. Prints the
medians per repeat: request latency of each, their difference, and the controller's own
time (features and both decisions) as a share of the request.

    python benchmarks/two_stage_overhead.py [--samples 40] [--budgets 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import pandas as pd
import torch

from knobctl.controller.numpy_policy import NumpyPolicy
from knobctl.controller.policy import Controller
from knobctl.controller.two_stage import answer_controlled
from knobctl.model.runtime import load_runtime
from knobctl.model.timing import answer_fixed
from knobctl.vqa.sources import decode_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--budgets", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rt, ctrl = load_runtime("models/base"), NumpyPolicy.from_controller(Controller.load("models/controller"))
    df = pd.read_parquet("data/vqa/test.parquet").head(args.samples)
    images = torch.from_numpy(decode_images(df["image"].tolist(), size=rt.config.vision_config.image_size))
    budgets = np.linspace(ctrl.config.budget_low_ms, ctrl.config.budget_high_ms, args.budgets)
    for i in range(5):  # warm-up
        answer_controlled(rt, ctrl, images[i : i + 1], df["question"].iloc[i], float(budgets[-1]))
    for rep in range(args.repeats):
        flow, direct, spent = [], [], []
        for i in range(len(df)):
            for b in budgets:
                res = answer_controlled(rt, ctrl, images[i : i + 1], df["question"].iloc[i], float(b))
                _, ms = answer_fixed(rt, images[i : i + 1], df["question"].iloc[i], res.knobs)
                flow.append(res.latency_ms)
                direct.append(ms)
                spent.append(res.controller_ms)
        f, d, c = statistics.median(flow), statistics.median(direct), statistics.median(spent)
        diff = statistics.median(np.array(flow) - np.array(direct))
        print(f"repeat {rep}: two-stage {f:.2f} ms, same knobs directly {d:.2f} ms, difference {diff:+.2f} ms; "
              f"controller time {c:.3f} ms = {c / f:.1%} of the request ({len(flow)} requests each)")


if __name__ == "__main__":
    main()
