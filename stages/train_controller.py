"""Stage train_controller: the two-stage controller trained with a group-relative loss (GRPO by default,
or the pairwise ranking loss) against the cached rollouts and the latency estimator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override train_controller keys")
    ap.add_argument("--rollouts", default="data/rollouts")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--profile", default="data/profile", help="latency profile: each configuration's spread")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="models/controller")
    ap.add_argument("--metrics", default="metrics/train.json")
    ap.add_argument("--plots", default="plots/train")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.controller.run import TrainInputs, train_from_cache, write_training
    from knobctl.knobs import KnobGrid

    own = apply_overrides(section(params, "train_controller", args.params), args.set, "train_controller")
    training = train_from_cache(own, KnobGrid.from_params(section(params, "knobs", args.params)),
                                section(params, "reward", args.params), seed_of(params, args.params),
                                TrainInputs(args.rollouts, args.estimator, args.profile, args.data))
    write_training(training, args.out, args.metrics, args.plots)
    print(training.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
