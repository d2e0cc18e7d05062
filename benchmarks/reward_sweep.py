"""What each reward weight does to the trained controller's held-out choices.

Trains the controller once per variant (one reward weight or the latency sampling changed from
params.yaml, everything else as train_controller runs it) on the same cached tables, and reports
its choices on the held-out samples over the evaluation budgets where a choice exists (some but
not all configurations fit): accuracy, the chance of running over with the profile's spread, the
mean estimated latency as a share of the budget, and the mean knob settings chosen.

    python benchmarks/reward_sweep.py [--root .] [--variants gamma=0 gamma=8 ...] [--seeds 0 1 2]

``--root`` is a repository with `dvc repro` outputs (data/rollouts, models/latency_estimator,
data/profile). A variant is ``reward_key=value`` or ``train_controller_key=value``; several,
comma-separated, change together. With several ``--seeds`` (each its own held-out split and
training run) every figure is the mean over them. Prints one Markdown row per variant; the probe's
accuracy and chance of running over on the same budgets are in the last columns.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd
import torch

from knobctl.controller.evaluation import choice_budgets
from knobctl.controller.reward import RewardWeights
from knobctl.controller.spread import latency_spread, violation_probability
from knobctl.controller.tables import build_tables
from knobctl.controller.training import TrainParams, split_samples, train_controller
from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.params import load_params, section, seed_of
from knobctl.table.accuracy_table import AccuracyTable

DEFAULT_VARIANTS = ("", "gamma=0", "gamma=0.5", "gamma=8", "delta=0", "delta=2", "beta=0.2", "beta=1",
                    "epsilon=0", "epsilon=0.02", "epsilon=-0.1", "alpha=0.5", "alpha=2",
                    "latency_sampling=median", "latency_sampling=median,gamma=8")


def parse(variant: str, weights: RewardWeights, p: TrainParams) -> tuple[RewardWeights, TrainParams]:
    for item in filter(None, variant.split(",")):
        key, value = item.split("=")
        if key in weights.as_params():
            weights = RewardWeights.from_params({**weights.as_params(), key: float(value)})
        else:
            p = dataclasses.replace(p, **{key: type(getattr(p, key))(value)})
    return weights, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=".")
    ap.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS))
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="default: params.yaml's seed")
    args = ap.parse_args()
    root = Path(args.root)
    params = load_params(root / "params.yaml")
    seeds = args.seeds or [seed_of(params, "params.yaml")]
    grid = KnobGrid.from_params(section(params, "knobs", "params.yaml"))
    base_w = RewardWeights.from_params(section(params, "reward", "params.yaml"))
    base_p = TrainParams.from_params(section(params, "train_controller", "params.yaml"))
    spread = latency_spread(pd.read_parquet(root / "data/profile/summary.parquet"), grid.configs())
    print("| variant | accuracy | static | gain per seed (points) | slow-request chance | latency / budget | "
          "high tier | top_k | blocks | probe | probe slow |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in args.variants:
        stats, gains = [], []
        for seed in seeds:
            rows = run(root, grid, spread, *parse(variant, base_w, base_p), seed)
            stats += rows
            gains.append(100 * float(pd.DataFrame(rows).eval("accuracy - static").mean()))
        m = pd.DataFrame(stats).mean()
        print(f"| {variant or 'params.yaml'} | {100 * m['accuracy']:.2f} | {100 * m['static']:.2f} | "
              f"{' / '.join(f'{g:+.2f}' for g in gains)} | {100 * m['slow']:.1f}% | {m['share']:.3f} | {100 * m['high']:.0f}% | {m['top_k']:.2f} | "
              f"{m['blocks']:.2f} | {100 * m['probe']:.2f} | {100 * m['probe_slow']:.1f}% |", flush=True)


def run(root: Path, grid: KnobGrid, spread: torch.Tensor, w: RewardWeights, p: TrainParams,
        seed: int) -> list[dict[str, float]]:
    """One training run; one row of held-out statistics per budget where a choice exists."""
    tables = build_tables(AccuracyTable.load(root / "data/rollouts"),
                          LatencyEstimator.load(root / "models/latency_estimator"), grid.configs(), spread)
    result = train_controller(tables, p, w, seed, progress=False)
    _, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed)
    stats = []
    for e in choice_budgets(result.evaluation):
        b = e["budget_ms"]
        chosen = result.controller.choose(tables.language[eval_idx], tables.vision[eval_idx],
                                          torch.full((len(eval_idx),), b), tables.text_tokens[eval_idx])
        col = torch.tensor([tables.configs.index(k) for k in chosen])  # [E]
        lat = tables.latency_ms[eval_idx, col]  # [E]
        stats.append({
            "accuracy": e["controller_accuracy"], "static": e["static_accuracy"],
            "slow": float(violation_probability(lat, b, tables.latency_spread[col]).mean()),
            "share": float((lat / b).mean()), "high": sum(k.tier == "high" for k in chosen) / len(chosen),
            "top_k": sum(k.top_k for k in chosen) / len(chosen),
            "blocks": sum(k.num_blocks for k in chosen) / len(chosen),
            "probe": e["probe_accuracy"], "probe_slow": e["probe_slow_rate"],
        })
    return stats


if __name__ == "__main__":
    main()
