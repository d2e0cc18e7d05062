"""Stage accuracy_table: every (val sample, configuration) answered once -> data/rollouts.

Shard it over processes or machines that share the cache folder, then merge:
    python stages/accuracy_table.py --shard 0 --num-shards 2 &
    python stages/accuracy_table.py --shard 1 --num-shards 2
    python stages/accuracy_table.py --merge-only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.params import MODEL_SOURCES  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override accuracy_table keys")
    ap.add_argument("--model", default="models/base", help=MODEL_SOURCES)
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--out", default="data/rollouts")
    ap.add_argument("--metrics", default="metrics/accuracy_table.json")
    ap.add_argument("--plots", default="plots/accuracy_table")
    ap.add_argument("--cache", default=".knobctl_cache/rollouts")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--merge-only", action="store_true", help="only join the finished parts of every shard")
    args = ap.parse_args(argv)
    from knobctl.contracts import FEATURES, ROLLOUTS, VQA_SPLIT, read_table
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch

    from knobctl.cluster import EXECUTOR_KEYS
    from knobctl.execution import use_threads
    from knobctl.io import (
        checkpoint_hash,
        file_hash,
        output_set,
        params_hash,
        provenance,
        write_csv_atomic,
        write_json_atomic,
        write_parquet,
    )
    from knobctl.knobs import KnobGrid
    from knobctl.model.features import FEATURE_DEFINITIONS
    from knobctl.model.presets import ModelParams
    from knobctl.model.runtime import DTYPES, load_runtime
    from knobctl.table.accuracy_table import (
        LocalExecutor,
        PartPlan,
        merge_parts,
        per_config_table,
        summarize,
        table_metrics,
    )
    from knobctl.table.rollouts import RolloutParams, select_configs
    from knobctl.vqa.sources import select_samples

    seed = seed_of(params, args.params)
    grid = KnobGrid.from_params(section(params, "knobs", args.params))
    own = apply_overrides(section(params, "accuracy_table", args.params), args.set, "accuracy_table")
    p = RolloutParams.from_params(own)
    # Where the parts run changes no byte of the table: the executor's keys stay out of its metadata and key.
    what = {k: v for k, v in own.items() if k not in EXECUTOR_KEYS}
    configs = select_configs(grid, p.configs)
    split_path = Path(args.data) / f"{p.split}.parquet"
    samples = select_samples(read_table(split_path, VQA_SPLIT), p.num_samples, seed, p.split)
    model = ModelParams.from_params(section(params, "model", args.params))
    load = {"device": p.device, "dtype": DTYPES[p.dtype], "block_order": model.block_order,
            "tier_tokens": model.tier_tokens}
    if p.executor == "ray":
        from knobctl.table.ray_executor import RayExecutor

        executor = RayExecutor(args.model, load, p)
    else:
        use_threads(p.num_threads)
        executor = LocalExecutor(load_runtime(args.model, **load), p)
    with executor:
        info = executor.describe(grid)
        model_hash = checkpoint_hash(args.model)
        run_key = params_hash({"rollouts": {k: v for k, v in p.__dict__.items() if k not in EXECUTOR_KEYS},
                               "configs": [k.label for k in configs], "seed": seed, "model": model_hash,
                               "data": file_hash(split_path), "block_order": info["block_order"],
                               "tiers": info["tiers"]})
        plan = PartPlan(Path(args.cache) / run_key, len(samples), p.part_size)
        start = time.perf_counter()
        ran = 0 if args.merge_only else executor.run(samples, configs, plan, plan.shard_parts(args.shard,
                                                                                             args.num_shards))
    wall = time.perf_counter() - start
    rate = f"{ran / wall:.0f} rollouts/s" if ran else "nothing left to run"
    if plan.missing() and (args.num_shards > 1 or args.merge_only):
        damaged = {i: plan.damage(i) for i in plan.missing() if plan.damage(i)}
        print(f"accuracy_table: shard {args.shard}/{args.num_shards} ran {ran} rollouts in {wall:.0f} s ({rate}); "
              f"{len(plan.missing())} of {plan.num_parts} parts still missing; merge with --merge-only once all are done"
              + (f"; damaged, recomputed by a rerun of their shard: {damaged}" if damaged else ""))
        return
    rows, feats = merge_parts(plan)
    meta = provenance(what, volatile=False, device=info["device"], device_type=info["device_type"], dtype=p.dtype,
                      model=args.model, model_hash=model_hash, block_order=info["block_order"], seed=seed,
                      split=p.split, samples=len(samples), configs=[k.label for k in configs], tiers=info["tiers"],
                      tier_tokens=info["tier_tokens"], max_new_tokens=info["max_new_tokens"],
                      feature_dim=info["feature_dim"], features=FEATURE_DEFINITIONS)
    out = Path(args.out)
    ROLLOUTS.check(rows, out / "rollouts.parquet")  # both checked before either is written
    FEATURES.check(feats, out / "features.parquet")
    with output_set() as outs:  # both tables or neither (a full disk while writing the second renames none)
        write_parquet(outs.file(out / "rollouts.parquet"), rows, meta)
        write_parquet(outs.file(out / "features.parquet"), feats, meta)
    metrics = summarize(rows, configs)
    write_json_atomic(out / "summary.json", metrics)  # per question type too; the metrics keep the headline
    # the report says what top_k does to this family's MoE output
    write_json_atomic(args.metrics, {**table_metrics(metrics), "model": info["family"]})
    write_csv_atomic(Path(args.plots) / "per_config.csv", per_config_table(rows, configs))
    plan.clear()
    print(f"accuracy_table: {len(rows)} rows ({len(samples)} samples x {len(configs)} configs), {ran} run now in "
          f"{wall:.0f} s ({rate}); accuracy full {metrics['full_accuracy']:.3f}, smallest "
          f"{metrics['smallest_accuracy']:.3f}, best static {metrics['best_static']['config']} "
          f"{metrics['best_static']['accuracy']:.3f}, oracle {metrics['oracle_accuracy']:.3f}; "
          f"{metrics['error_samples']} samples with errors")


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
