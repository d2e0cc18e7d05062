"""The accuracy_table stage as two calls: :func:`build_accuracy_table` runs (or resumes) this shard's parts and
merges them once all are done; :func:`write_accuracy_table` writes the table and its summaries.

What the run is keyed by, and what its table's metadata says, leave out where the parts ran
(:data:`knobctl.cluster.EXECUTOR_KEYS`): a run stopped under one executor resumes under the other, and the
table is the same bytes either way. Only the knobs grid, the seed, ``model.block_order``, ``model.tier_tokens`` and
``model.decode`` (every decode path gives the same tokens) are read beside the ``accuracy_table`` section: the keys
dvc.yaml lists for the stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from knobctl.cluster import EXECUTOR_KEYS
from knobctl.contracts import FEATURES, ROLLOUTS, VQA_REQUESTS, read_table
from knobctl.execution import use_threads
from knobctl.io import (
    checkpoint_hash,
    file_hash,
    output_set,
    params_hash,
    provenance,
    write_csv,
    write_json,
    write_parquet,
)
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.features import FEATURE_DEFINITIONS
from knobctl.model.presets import ModelParams
from knobctl.model.runtime import DTYPES, load_runtime
from knobctl.params import InputError
from knobctl.table.accuracy_table import AccuracyTable, LocalExecutor, PartPlan, merge_parts
from knobctl.table.rollouts import RolloutParams, select_configs
from knobctl.table.summary import per_config_table, summarize, table_metrics
from knobctl.vqa.sources import select_samples

#: The keys of the ``model`` section the accuracy table reads (dvc.yaml lists the same).
MODEL_KEYS = ("block_order", "tier_tokens", "decode")
#: Keys that, when null (the model's own limits), change no row of a table the model answers in full: they stay
#: out of its hash and metadata, so that a table built before they existed keeps its bytes.
CAP_KEYS = ("max_image_pixels", "max_question_tokens")


def keyed(values: Mapping[str, Any]) -> dict[str, Any]:
    """The params that determine the rows: without the executor's keys and the caps left null."""
    return {k: v for k, v in values.items() if k not in EXECUTOR_KEYS and not (k in CAP_KEYS and v is None)}


@dataclass(frozen=True)
class Shard:
    """Which parts this process runs: part ``i`` belongs to shard ``i % count``; ``merge_only`` runs none."""

    index: int = 0
    count: int = 1
    merge_only: bool = False


@dataclass(frozen=True)
class TableBuild:
    """A run of the accuracy table: its parts, what it ran, and once every part is done the merged table."""

    plan: PartPlan
    configs: tuple[KnobConfig, ...]
    samples: int
    ran: int  # rollouts run by this process
    wall_s: float
    shard: Shard
    rows: pd.DataFrame | None = None  # the merged table; None while parts are missing
    feats: pd.DataFrame | None = None
    meta: Mapping[str, Any] | None = None
    summary: Mapping[str, Any] | None = None  # data/rollouts/summary.json

    @property
    def complete(self) -> bool:
        return self.rows is not None

    def line(self) -> str:
        """The stage's last line: what ran, and the table's headline or what is still missing."""
        rate = f"{self.ran / self.wall_s:.0f} rollouts/s" if self.ran else "nothing left to run"
        if self.summary is None:
            damaged = {i: self.plan.damage(i) for i in self.plan.missing() if self.plan.damage(i)}
            return (f"accuracy_table: shard {self.shard.index}/{self.shard.count} ran {self.ran} rollouts in "
                    f"{self.wall_s:.0f} s ({rate}); {len(self.plan.missing())} of {self.plan.num_parts} parts still "
                    "missing; merge with --merge-only once all are done"
                    + (f"; damaged, recomputed by a rerun of their shard: {damaged}" if damaged else ""))
        s = self.summary
        return (f"accuracy_table: {len(self.rows)} rows ({self.samples} samples x {len(self.configs)} configs), "
                f"{self.ran} run now in {self.wall_s:.0f} s ({rate}); accuracy full {s['full_accuracy']:.3f}, smallest "
                f"{s['smallest_accuracy']:.3f}, best static {s['best_static']['config']} "
                f"{s['best_static']['accuracy']:.3f}, oracle {s['oracle_accuracy']:.3f}; "
                f"{s['error_samples']} samples with errors")


def _executor(model: str, load: Mapping[str, Any], p: RolloutParams) -> Any:
    """Where the parts run: Ray actors (``executor: ray``) or this process on a runtime loaded here."""
    if p.executor == "ray":
        from knobctl.table.ray_executor import RayExecutor

        return RayExecutor(model, load, p)
    use_threads(p.num_threads)
    return LocalExecutor(load_runtime(model, **load), p)


def build_accuracy_table(own: Mapping[str, Any], grid: KnobGrid, model_section: Mapping[str, Any], seed: int, *,
                         model: str, data: str | Path, cache: str | Path, shard: Shard = Shard()) -> TableBuild:
    """Run the parts of ``shard`` not done yet in the run's cache folder (keyed by everything that determines
    the rows), then merge every part if all are done. ``own`` is the ``accuracy_table`` section (overrides
    applied), ``model_section`` params' ``model`` section, of which only :data:`MODEL_KEYS` are read."""
    p = RolloutParams.from_params(own)
    configs = tuple(select_configs(grid, p.configs))
    split_path = Path(data) / f"{p.split}.parquet"
    samples = select_samples(read_table(split_path, VQA_REQUESTS), p.num_samples, seed, p.split)
    options = ModelParams.from_params({k: model_section[k] for k in MODEL_KEYS if k in model_section})
    load = {"device": p.device, "dtype": DTYPES[p.dtype], "block_order": options.block_order,
            "tier_tokens": options.tier_tokens, "decode": options.decode}
    with _executor(model, load, p) as executor:
        info = executor.describe(grid)
        model_hash = checkpoint_hash(model)
        run_key = params_hash({"rollouts": keyed(p.__dict__),
                               "configs": [k.label for k in configs], "seed": seed, "model": model_hash,
                               "data": file_hash(split_path), "block_order": info["block_order"],
                               "tiers": info["tiers"]})
        plan = PartPlan(Path(cache) / run_key, len(samples), p.part_size)
        start = time.perf_counter()
        ran = 0 if shard.merge_only else executor.run(samples, list(configs), plan,
                                                      plan.shard_parts(shard.index, shard.count))
    done = TableBuild(plan, configs, len(samples), ran, time.perf_counter() - start, shard)
    if plan.missing() and (shard.count > 1 or shard.merge_only):
        return done
    rows, feats = merge_parts(plan)
    failed = rows["error"].notna().groupby(rows["sample_id"], sort=False).all()
    if failed.all():
        raise InputError(f"every one of the {len(failed)} samples failed, e.g. {failed.index[0]}: "
                         f"{rows['error'].iloc[0]}; fix the {p.split} split or the caps (accuracy_table.max_image_pixels, "
                         "max_question_tokens)")
    meta = provenance(keyed(own), volatile=False,
                      device=info["device"], device_type=info["device_type"], dtype=p.dtype, model=model,
                      model_hash=model_hash, block_order=info["block_order"], seed=seed, split=p.split,
                      samples=len(samples), configs=[k.label for k in configs], tiers=info["tiers"],
                      tier_tokens=info["tier_tokens"], max_new_tokens=info["max_new_tokens"],
                      feature_dim=info["feature_dim"], features=FEATURE_DEFINITIONS)
    # the summary says which model family answered, and so what top_k does to its MoE output
    summary = {**summarize(rows, configs), "model": info["family"]}
    return TableBuild(plan, configs, len(samples), ran, done.wall_s, shard, rows, feats, meta, summary)


def write_accuracy_table(build: TableBuild, out: str | Path, metrics: str | Path, plots: str | Path) -> None:
    """The merged table (rollouts and features), its summary beside it, metrics/accuracy_table.json and the
    per-configuration CSV: all of them or none. The run's parts are removed once they are written."""
    out = Path(out)
    ROLLOUTS.check(build.rows, out / "rollouts.parquet")  # both checked before either is written
    FEATURES.check(build.feats, out / "features.parquet")
    AccuracyTable.from_frames(build.rows, build.feats)  # and together, as every reader reads them
    with output_set() as outs:  # a full disk while writing the last renames none
        write_parquet(outs.file(out / "rollouts.parquet"), build.rows, build.meta)
        write_parquet(outs.file(out / "features.parquet"), build.feats, build.meta)
        write_json(outs.file(out / "summary.json"), build.summary)
        write_json(outs.file(metrics), table_metrics(build.summary))
        write_csv(outs.file(Path(plots) / "per_config.csv"), per_config_table(build.rows, build.configs))
    build.plan.clear()
