"""The accuracy table on disk: sharded, resumable part files and their merge (its summary: table/summary.py).

The selected samples are cut into parts of ``part_size`` in a fixed order; part ``i``
belongs to shard ``i % num_shards``. A part is two atomic files in the run's cache
folder (keyed by a hash of everything that determines the rows): ``features-NNNNN`` is
written first, ``rows-NNNNN`` last, so a part counts as done only when both exist. A
rerun skips done parts, and since each part's rows depend only on its own samples, a run
killed mid-way and resumed, or split over shards, merges into the same table as one
uninterrupted run. A part file that exists but cannot be read (a disk that filled up, a
copy cut short) does not count as done: the next run deletes and recomputes that part,
saying so on stderr, and the merge names any such file rather than merging it.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from knobctl.contracts import FEATURES, ROLLOUTS, TableContractError, read_table
from knobctl.execution import progress_bar
from knobctl.io import write_parquet_atomic
from knobctl.knobs import KnobConfig, KnobGrid, check_configs_in_grid
from knobctl.model.runtime import Runtime, device_name
from knobctl.params import InputError
from knobctl.table.rollouts import RolloutParams, rollout_part


class DamagedPartError(InputError):
    """A part file of the accuracy table exists but cannot be read; it is never merged (a stage prints the
    message, which names the file and what to do, without a traceback)."""


def _read_part(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DamagedPartError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it and rerun the shard that owns it "
            "(it recomputes the part), then merge"
        ) from exc


@dataclass(frozen=True)
class PartPlan:
    """Where the parts of one run live and which samples each part holds."""

    directory: Path
    num_samples: int
    part_size: int

    @property
    def num_parts(self) -> int:
        return -(-self.num_samples // self.part_size)

    def rows_path(self, i: int) -> Path:
        return self.directory / f"rows-{i:05d}.parquet"

    def features_path(self, i: int) -> Path:
        return self.directory / f"features-{i:05d}.parquet"

    def part(self, samples: pd.DataFrame, i: int) -> pd.DataFrame:
        """Part ``i``'s rows of the selected samples."""
        return samples.iloc[i * self.part_size : (i + 1) * self.part_size]

    def part_samples(self, i: int) -> int:
        return max(0, min(self.part_size, self.num_samples - i * self.part_size))

    def damage(self, i: int) -> list[str]:
        """Why part ``i``'s existing files cannot be used (empty if they can, or are simply absent).

        Only the Parquet footer and row counts are read, which catches a file cut short without
        reading every part's data on each check; a file damaged inside its data still fails the
        merge, by name.
        """
        problems = []
        for path in (self.features_path(i), self.rows_path(i)):
            if not path.exists():
                continue
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
                problems.append(f"{path.name}: {type(exc).__name__}: {exc}")
                continue
            n = self.part_samples(i)
            # features hold one row per sample, rows one per (sample, configuration)
            if (rows != n) if path == self.features_path(i) else (rows == 0 or rows % n):
                problems.append(f"{path.name}: {rows} rows for a part of {n} samples")
        return problems

    def done(self, i: int) -> bool:
        return self.rows_path(i).exists() and self.features_path(i).exists() and not self.damage(i)

    def shard_parts(self, shard: int, num_shards: int) -> list[int]:
        if num_shards < 1 or not 0 <= shard < num_shards:
            raise ValueError(f"--shard {shard} --num-shards {num_shards}: need 0 <= shard < num_shards")
        return [i for i in range(self.num_parts) if i % num_shards == shard]

    def missing(self) -> list[int]:
        return [i for i in range(self.num_parts) if not self.done(i)]

    def clear(self) -> None:
        """Remove the parts once they are merged into the final tables."""
        shutil.rmtree(self.directory, ignore_errors=True)


def table_info(rt: Runtime, grid: KnobGrid, p: RolloutParams) -> dict[str, Any]:
    """What the table's metadata says about the model that answered (checked against the ``knobs:`` grid
    first): the same whichever executor ran the parts."""
    rt.validate_grid(grid)
    family = rt.family
    # A CPU's torch threads time a profile but change no rollout: a Ray worker runs fewer threads than the
    # local process, and the table must be the same bytes either way.
    return {"device": device_name(rt.device, threads=False), "device_type": rt.device.type, "tiers": rt.tier_table(),
            "tier_tokens": rt.layout.tier_tokens,
            "block_order": rt.spec.block_order_json,  # resolved: a file's list, not its path
            "max_new_tokens": p.max_new_tokens or rt.spec.max_new_tokens,
            "feature_dim": int(2 * rt.config.text_config.hidden_size),
            "family": {"family": family.model_type, "name": family.name, "top_k_weights": family.renormalises}}


def parts_to_run(plan: PartPlan, parts: Sequence[int]) -> list[int]:
    """The given parts that are not done yet; a part with a damaged file is deleted first (named on stderr)."""
    for i in parts:
        problems = plan.damage(i)
        if problems:
            print(f"accuracy_table: part {i} in {plan.directory} is damaged ({'; '.join(problems)}); "
                  "deleting and recomputing it", file=sys.stderr)
            plan.rows_path(i).unlink(missing_ok=True)  # rows first: the part stops counting as done at once
            plan.features_path(i).unlink(missing_ok=True)
    plan.directory.mkdir(parents=True, exist_ok=True)
    return [i for i in parts if not plan.done(i)]


def run_parts(
    rt: Runtime, samples: pd.DataFrame, configs: Sequence[KnobConfig], p: RolloutParams, plan: PartPlan,
    parts: Sequence[int], progress: bool = True,
) -> int:
    """Roll out the given parts that are not done yet, here; returns the number of rollouts run."""
    todo = parts_to_run(plan, parts)
    sizes = {i: len(plan.part(samples, i)) for i in todo}
    with progress_bar(total=sum(sizes.values()) * len(configs), desc="rollouts", unit="rollout",
                      disable=not progress) as bar:
        for i in todo:
            part = plan.part(samples, i)
            rows, feats = rollout_part(rt, part, configs, p, on_batch=lambda n: bar.update(n * len(configs)))
            write_parquet_atomic(plan.features_path(i), feats)
            write_parquet_atomic(plan.rows_path(i), rows)
    return sum(sizes.values()) * len(configs)


class LocalExecutor:
    """The parts in this process, on a loaded runtime (``accuracy_table.executor: local``); the Ray executor
    (:class:`knobctl.table.ray_executor.RayExecutor`) has the same methods."""

    def __init__(self, rt: Runtime, p: RolloutParams):
        self.rt, self.p = rt, p

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self, grid: KnobGrid) -> dict[str, Any]:
        return table_info(self.rt, grid, self.p)

    def run(self, samples: pd.DataFrame, configs: Sequence[KnobConfig], plan: PartPlan, parts: Sequence[int],
            progress: bool = True) -> int:
        return run_parts(self.rt, samples, configs, self.p, plan, parts, progress)


def merge_parts(plan: PartPlan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every part's rows and features, in sample order; names the parts still missing."""
    damaged = {i: problems for i in range(plan.num_parts) if (problems := plan.damage(i))}
    if damaged:
        raise DamagedPartError(
            f"{len(damaged)} part(s) in {plan.directory} cannot be read: "
            + "; ".join(f"part {i}: {', '.join(p)}" for i, p in list(damaged.items())[:5])
            + ". Rerun the shards that own them (part i belongs to shard i % num_shards): they recompute damaged "
            "parts; then merge"
        )
    missing = plan.missing()
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {plan.num_parts} parts are not done in {plan.directory} (first: {missing[:5]}); "
            "run the shards that own them (part i belongs to shard i % num_shards), then merge"
        )
    rows = pd.concat([_read_part(plan.rows_path(i)) for i in range(plan.num_parts)], ignore_index=True)
    feats = pd.concat([_read_part(plan.features_path(i)) for i in range(plan.num_parts)], ignore_index=True)
    return rows, feats


def _vectors(feats: pd.DataFrame, tiers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The language [S, D] and vision [S, T, D] features as float32 arrays; a missing tier column or vectors of
    unequal lengths are a named error, not numpy's."""
    columns = ["language", *(f"vision_{t}" for t in tiers)]
    absent = [name for name in columns if name not in feats]
    if absent:
        raise TableContractError(f"features: columns {absent} are missing (the rollouts' tiers need them); rebuild "
                                 "them with `dvc repro accuracy_table`")
    lengths = {name: set(feats[name].map(len)) for name in columns}
    if len(set().union(*lengths.values())) != 1:
        raise TableContractError(f"features: vectors of unequal lengths {lengths}; every one has the same length; "
                                 "rebuild them with `dvc repro accuracy_table`")
    language = np.stack(feats["language"].to_numpy()).astype(np.float32)
    vision = np.stack([np.stack(feats[f"vision_{t}"].to_numpy()) for t in tiers], axis=1).astype(np.float32)
    return language, vision


@dataclass(frozen=True)
class AccuracyTable:
    """The merged table as dense arrays, for tensor lookups in controller training.

    Rows of every array follow ``sample_ids``; configuration columns follow ``configs``
    (grid order); tier columns follow ``tiers``. Error cells hold NaN scores and -1 lengths.
    """

    sample_ids: np.ndarray  # [S]
    question_types: np.ndarray  # [S]
    configs: tuple[KnobConfig, ...]  # C
    tiers: tuple[str, ...]  # T
    scores: np.ndarray  # [S, C] VQA score
    input_tokens: np.ndarray  # [S, C]
    output_tokens: np.ndarray  # [S, C]
    language: np.ndarray  # [S, D]
    vision: np.ndarray  # [S, T, D]

    @classmethod
    def from_frames(cls, rows: pd.DataFrame, feats: pd.DataFrame) -> AccuracyTable:
        """The dense arrays of a table's rows and features, without the samples that failed (every row of theirs
        an error row, their features NaN): no configuration answered them, so no choice can be learnt from them.
        The table's summary counts them as wrong answers."""
        ids = feats["sample_id"].to_numpy()
        if len(ids) == 0 or len(rows) == 0:
            raise TableContractError("the accuracy table has no rows; rebuild it with `dvc repro accuracy_table`")
        first = rows[rows["sample_id"] == ids[0]]
        configs = tuple(KnobConfig(t, int(k), int(b)) for t, k, b in first[["tier", "top_k", "num_blocks"]].itertuples(
            index=False, name=None))
        s, c = len(ids), len(configs)
        labels = np.array([k.label for k in configs], dtype=object)
        if len(rows) != s * c or not (rows["sample_id"].to_numpy().reshape(s, c) == ids[:, None]).all() or not (
                rows["config"].to_numpy().reshape(s, c) == labels[None, :]).all():
            raise TableContractError(f"rollouts hold {len(rows)} rows, not {s} samples x {c} configurations in sample "
                                     "order (every sample of the features, each with the same configurations in the "
                                     "same order); rebuild them with `dvc repro accuracy_table`")
        unexplained = rows["score"].isna() & rows["error"].isna() if "error" in rows else rows["score"].isna()
        if unexplained.any():  # a missing score is an error row's, and the error says why
            first = rows.loc[unexplained, ["sample_id", "config"]].iloc[0].to_dict()
            raise TableContractError(f"rollouts: {int(unexplained.sum())} rows have no score and no error (e.g. "
                                     f"{first}); rebuild them with `dvc repro accuracy_table`")
        tiers = tuple(dict.fromkeys(k.tier for k in configs))
        language, vision = _vectors(feats, tiers)  # [S, D], [S, T, D]
        failed = (rows["error"].notna().to_numpy().reshape(s, c).all(1) if "error" in rows
                  else np.zeros(s, dtype=bool))  # [S]
        blank = np.isnan(language).any(1) | np.isnan(vision).any((1, 2))  # [S]
        if (blank & ~failed).any():
            raise TableContractError(f"features: sample {ids[blank & ~failed][0]!r} has NaN features but answers in "
                                     "the rollouts (NaN features belong to a sample that failed under every "
                                     "configuration); rebuild them with `dvc repro accuracy_table`")
        keep = ~failed
        if not keep.any():
            raise TableContractError(f"every one of the table's {s} samples failed (e.g. {ids[0]!r}: "
                                     f"{rows['error'].iloc[0]}); rebuild it with `dvc repro accuracy_table`")
        return cls(
            sample_ids=ids[keep], question_types=feats["question_type"].to_numpy()[keep], configs=configs,
            tiers=tiers, scores=rows["score"].to_numpy(dtype=np.float32).reshape(s, c)[keep],
            input_tokens=rows["input_tokens"].to_numpy().reshape(s, c)[keep],
            output_tokens=rows["output_tokens"].to_numpy().reshape(s, c)[keep],
            language=language[keep], vision=vision[keep],
        )

    def check_grid(self, grid: KnobGrid, source: str | Path = "data/rollouts", stage: str = "",
                   lacking: str = "") -> None:
        """Refuse a table built for another knob grid (every configuration must be in ``grid``). A subset is
        allowed; with ``stage``, the configurations it lacks are named on stderr, ``lacking`` saying what that
        stage does without them."""
        check_configs_in_grid(self.configs, grid, str(source), "Rebuild it with `dvc repro accuracy_table` or set "
                              "knobs: to the table's grid.")
        absent = [k.label for k in grid.configs() if k not in set(self.configs)]
        if absent and stage:
            print(f"{stage}: {len(absent)} configurations of the knobs grid are not in {source} (first: {absent[0]}); "
                  f"{lacking}", file=sys.stderr)

    @classmethod
    def load(cls, directory: str | Path = "data/rollouts") -> AccuracyTable:
        directory = Path(directory)
        return cls.from_frames(read_table(directory / "rollouts.parquet", ROLLOUTS),
                               read_table(directory / "features.parquet", FEATURES))
