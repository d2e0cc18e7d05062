"""Which torch CPU thread count each CPU-bound stage should use: its unit of work at 1 and at 2 threads (or
--threads), on an idle machine and beside one busy process, side by side in one run.

    python benchmarks/threads.py [--rounds 5] [--threads 1 2] [--only accuracy_table] [--model models/base]

Each round runs every (workload, thread count) once per condition, in that order, so drift hits all alike;
the table gives medians over rounds. The busy process is one Python loop that spins on a core, as a second job
(another `dvc exp run`, a notebook, a test run) would. Workloads:
* train_base: one VLM training step at the default dims (batch 128, a random knob configuration);
* eval_base: greedy answers of 256 test questions at the full configuration (batch 256);
* accuracy_table: one part of the stage, 250 val samples in one batch, under every configuration of the grid;
* train_controller: 200 training steps on the cached tables (batch 128 x G 16);
* validate / profile_latency: 20 timed batch-1 requests at a middle configuration (mean ms per request).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from knobctl.base.training import batch_loss, encode_split
from knobctl.controller.reward import RewardWeights
from knobctl.controller.tables import build_tables
from knobctl.controller.training import TrainParams, train_controller
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.model.runtime import load_runtime
from knobctl.model.timing import answer_fixed
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.rollouts import RolloutParams, rollout_part
from knobctl.vqa.sources import decode_images

SPIN = "while True:\n    pass\n"


def workloads(args: argparse.Namespace) -> dict[str, Callable[[], float]]:
    """name -> a function that runs one unit of work and returns its seconds (or ms per request)."""
    grid = KnobGrid()
    rt = load_runtime(args.model, device="cpu")
    train = pd.read_parquet(Path(args.data) / "train.parquet").head(2000)
    test = pd.read_parquet(Path(args.data) / "test.parquet").head(256)
    val = pd.read_parquet(Path(args.data) / "val.parquet").head(250)
    data = encode_split(rt, train, size=64)
    opt = torch.optim.AdamW(rt.model.parameters(), lr=1e-9)  # a real step that leaves the weights in place
    gen = torch.Generator().manual_seed(0)
    configs = grid.configs()
    tables = build_tables(AccuracyTable.load(args.rollouts), LatencyEstimator.load(args.estimator), configs)
    images = torch.from_numpy(decode_images(test["image"].tolist(), size=64))
    mid = KnobConfig("medium", 6, 14)

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def train_step() -> None:
        rt.model.train()
        rows = torch.randint(0, len(train), (128,), generator=gen).numpy()
        loss = batch_loss(rt, data, rows, configs[int(torch.randint(len(configs), (1,), generator=gen))])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rt.model.eval()

    def requests() -> float:
        ms = [answer_fixed(rt, images[i : i + 1], test["question"].iloc[i], mid)[1] for i in range(20)]
        return float(np.mean(ms))

    return {
        "train_base (s/step)": lambda: timed(train_step),
        "eval_base (s / 256 answers)": lambda: timed(lambda: rt.answer(images, test["question"].tolist(),
                                                                       grid.full, batch_size=256)),
        "accuracy_table (s / 250 samples x 75)": lambda: timed(lambda: rollout_part(
            rt, val, configs, RolloutParams(batch_size=250, part_size=250))),
        "train_controller (s / 200 steps)": lambda: timed(lambda: train_controller(
            tables, TrainParams(steps=200), RewardWeights(), seed=0, progress=False)),
        "validate, profile (ms / request)": requests,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--only", nargs="*", default=None, help="workloads whose name starts with one of these")
    args = ap.parse_args()
    work = {k: v for k, v in workloads(args).items() if not args.only or k.startswith(tuple(args.only))}
    results: dict[tuple[str, str, int], list[float]] = {}
    for rnd in range(args.rounds + 1):  # round 0 warms every path up and is not recorded
        for condition in ("idle", "busy"):
            spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "busy" else None
            try:
                for name, fn in work.items():
                    for n in args.threads:
                        torch.set_num_threads(n)
                        value = fn()
                        if rnd:
                            results.setdefault((name, condition, n), []).append(value)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
        print(f"round {rnd} done", file=sys.stderr)
    print(f"| workload | condition | {' | '.join(f'{n} thread(s)' for n in args.threads)} | "
          f"{args.threads[0]} vs {args.threads[-1]} |")
    print("| --- | --- |" + " --- |" * (len(args.threads) + 1))
    for name in work:
        for condition in ("idle", "busy"):
            med = [statistics.median(results[(name, condition, n)]) for n in args.threads]
            print(f"| {name} | {condition} | {' | '.join(f'{m:.3g}' for m in med)} | {med[0] / med[-1]:.2f}x |")


if __name__ == "__main__":
    main()
