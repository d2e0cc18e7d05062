"""Stage accuracy_table: every (val sample, configuration) answered once -> data/rollouts.

Shard it over processes or machines that share the cache folder, then merge:
    python stages/accuracy_table.py --shard 0 --num-shards 2 &
    python stages/accuracy_table.py --shard 1 --num-shards 2
    python stages/accuracy_table.py --merge-only
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import model_sources, source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override accuracy_table keys")
    ap.add_argument("--model", default="models/base", help=model_sources())
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="data/rollouts")
    ap.add_argument("--metrics", default="metrics/accuracy_table.json")
    ap.add_argument("--plots", default="plots/accuracy_table")
    ap.add_argument("--cache", default=".knobctl_cache/rollouts")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--merge-only", action="store_true", help="only join the finished parts of every shard")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.knobs import KnobGrid
    from knobctl.table.build import Shard, build_accuracy_table, write_accuracy_table

    own = apply_overrides(section(params, "accuracy_table", args.params), args.set, "accuracy_table")
    build = build_accuracy_table(own, KnobGrid.from_params(section(params, "knobs", args.params)),
                                 section(params, "model", args.params), seed_of(params, args.params), model=args.model,
                                 data=args.data, cache=args.cache,
                                 shard=Shard(args.shard, args.num_shards, args.merge_only))
    if build.complete:
        write_accuracy_table(build, args.out, args.metrics, args.plots)
    print(build.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
