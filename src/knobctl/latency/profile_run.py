"""A profile's run: the schedule still to measure, the engine that measures it on one device, the checks of
the merged rows, and the local executor (``profile_latency.executor: local``).

A run is split so that a Ray driver (:mod:`knobctl.latency.ray_profiler`) needs no model:
:class:`ProfilePlan` is what to measure and in which order, :class:`Profiler` measures on a loaded runtime
(here, or in each worker). Every row carries the device that measured it (:class:`DeviceTag`), and a
profile holds rows of one device name only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import pandas as pd
import torch

from knobctl.contracts import PROFILE_ROWS, TableContractError
from knobctl.execution import progress_bar
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.latency.profiling import (
    Case,
    DeviceTag,
    ProfileParams,
    RuntimeMeasurer,
    Timing,
    cases_for,
    describe_error,
    make_row,
    release_memory,
    schedule,
)
from knobctl.model.runtime import Runtime
from knobctl.params import InputError

#: One measurement's identity: a resumed run skips the keys its store already holds.
KEY = ["round", "config", "text_tokens", "output_tokens"]


@dataclass(frozen=True)
class ProfilePlan:
    """What a profile measures and in which order, without a model: all a Ray driver holds."""

    cases: tuple[Case, ...]
    rounds: int
    warmup_rounds: int
    seed: int

    @classmethod
    def of(cls, configs: Sequence[KnobConfig], p: ProfileParams, seed: int) -> ProfilePlan:
        return cls(tuple(cases_for(configs, p.text_tokens, p.output_tokens)), p.rounds, p.warmup_rounds, seed)

    def pending(self, done: set[tuple[Any, ...]]) -> list[tuple[int, int, Case]]:
        """(round, position, case) still to measure, in schedule order."""
        return [(r, pos, c) for r, pos, c in schedule(self.cases, self.rounds, self.seed) if (r, *c.key) not in done]

    def resume(self, store: Any, device: str) -> set[tuple[Any, ...]]:
        """The keys already in ``store``, once its rows are known to be of ``device``: a run that would add
        another device's rows is refused before it measures anything, not at the merge."""
        rows = store.read()
        others = sorted(set(rows["device"]) - {device}) if len(rows) else []
        if others:
            raise InputError(f"{store.directory} holds rows measured on {', '.join(others)}; this run measures on "
                             f"{device}. A profile holds one device name (a CPU's includes its torch threads): "
                             "delete the folder to start afresh, or resume on the device that began it")
        return set(rows[KEY].itertuples(index=False, name=None)) if len(rows) else set()

    def finish(self, store: Any) -> pd.DataFrame:
        """Every measured row, checked complete and of one device, in schedule order."""
        store.flush()
        try:  # parts an earlier run left may have been damaged since
            rows = PROFILE_ROWS.check(store.read(), store.directory)
        except TableContractError as exc:
            raise InputError(f"{exc} (the parts of an interrupted run: delete {store.directory} to measure afresh)") \
                from None
        check_complete(rows, self.cases, self.rounds, self.seed, store.directory)
        check_one_device(rows, store.directory)
        return rows.sort_values(["round", "order"], kind="stable").reset_index(drop=True)


@dataclass
class Profiler:
    """Measures scheduled cases on one device, warming it up first: a local run's engine and each Ray worker's.

    ``input_tokens`` and ``visual_tokens`` give a case's prompt length and visual tokens for its row.
    """

    measure: Callable[[Case], Timing]
    plan: ProfilePlan
    input_tokens: Callable[[Case], int]
    visual_tokens: Callable[[Case], int]
    batch_size: int
    device: torch.device | None = None
    tag: DeviceTag = field(default_factory=DeviceTag.here)
    warmed: bool = False

    @classmethod
    def for_runtime(cls, rt: Runtime, configs: Sequence[KnobConfig], p: ProfileParams, seed: int,
                    worker: int = 0) -> Profiler:
        for k in configs:
            rt.validate(k)
        measurer = RuntimeMeasurer(rt, p.batch_size, p.image_size, seed)
        return cls(measurer, ProfilePlan.of(configs, p, seed), measurer.input_tokens,
                   lambda c: rt.visual_tokens(c.knobs.tier), p.batch_size, rt.device, DeviceTag.here(rt.device, worker))

    def warm_up(self, progress: bool = True) -> None:
        """The warm-up rounds, once, never recorded; a case that raises here is recorded in the rounds proper."""
        if self.warmed:
            return
        warm = schedule(self.plan.cases, self.plan.warmup_rounds, self.plan.seed, stream=1)
        for _, _, case in progress_bar(warm, desc="warm-up", disable=not progress or not warm, leave=False):
            try:
                self.measure(case)
            except Exception:  # noqa: BLE001  (recorded in the measured rounds instead)
                release_memory(self.device)
        self.warmed = True

    def row(self, rnd: int, pos: int, case: Case) -> dict[str, Any]:
        """One measurement as a row; a case that raises (out of memory, a kernel error) is a row with its error."""
        try:
            timing, error = self.measure(case), None
        except Exception as exc:  # noqa: BLE001  (a failed configuration is a row, not a crash)
            timing, error = None, describe_error(exc)
            release_memory(self.device)
        return make_row(case, rnd, pos, self.input_tokens(case), self.visual_tokens(case), self.batch_size, timing,
                        error, self.tag)

    def run(self, store: Any, progress: bool = True) -> pd.DataFrame:
        """Every measurement not yet in ``store`` (a PartStore), then the whole checked profile.

        Warm-up rounds run only when something is left to measure."""
        done = self.plan.resume(store, self.tag.device)
        todo = self.plan.pending(done)
        if todo:
            self.warm_up(progress)
        for rnd, pos, case in progress_bar(todo, desc="profile", disable=not progress, initial=len(done),
                                           total=len(done) + len(todo)):
            store.append(self.row(rnd, pos, case))
        return self.plan.finish(store)


def run_profile(
    measure: Callable[[Case], Timing],
    cases: Sequence[Case],
    *,
    rounds: int,
    warmup_rounds: int,
    seed: int,
    store: Any,
    input_tokens: Callable[[Case], int],
    visual_tokens: Callable[[Case], int],
    batch_size: int,
    device: torch.device | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure every case ``rounds`` times, interleaved; rows go to ``store`` (a PartStore).

    Cases already in the store (same round and case) are skipped, so a rerun resumes. Warm-up
    rounds run only when something is left to measure and are never recorded; a case that
    raises during warm-up is measured (and recorded as an error) in the rounds proper.
    """
    plan = ProfilePlan(tuple(cases), rounds, warmup_rounds, seed)
    return Profiler(measure, plan, input_tokens, visual_tokens, batch_size, device).run(store, progress)


def check_complete(rows: pd.DataFrame, cases: Sequence[Case], rounds: int, seed: int, where: Any) -> None:
    """Every scheduled (round, case) measured exactly once, or an error naming what is missing or repeated: a
    profile that silently lost rows would still summarise (and fit an estimator) without complaint."""
    keys = list(rows[KEY].itertuples(index=False, name=None))
    expected = {(r, *c.key) for r, _, c in schedule(cases, rounds, seed)}
    missing, repeated = expected - set(keys), len(keys) - len(set(keys))
    if missing or repeated or set(keys) - expected:
        raise InputError(f"the profile in {where} holds {len(keys)} rows for {len(expected)} scheduled measurements: "
                           f"{len(missing)} missing (first: {sorted(missing)[:1]}), {repeated} repeated; delete the "
                           "folder and rerun the stage")


def check_one_device(rows: pd.DataFrame, where: Any) -> None:
    """A profile is one kind of device's clock: rows of devices by other names are never merged (an A100's
    rounds would pass for an H100's), only reported."""
    counts = rows["device"].value_counts()
    if len(counts) > 1:
        found = ", ".join(f"{name} ({n} rows)" for name, n in counts.items())
        raise InputError(f"the profile in {where} holds rows of {len(counts)} devices: {found}. A profile merges "
                         "measurements of one device name only: profile each kind apart (a Ray cluster: set "
                         "profile_latency.ray.accelerator_type), and delete the folder to start afresh")


def profile_info(rt: Runtime, tag: DeviceTag) -> dict[str, Any]:
    """What a profile's metadata says of the runtime that measured it."""
    return {"device": tag.device, "device_type": rt.device.type, "host": tag.host, "worker": tag.worker,
            "experts_implementation": rt.model.config.text_config._experts_implementation,
            "num_threads": torch.get_num_threads(), "tiers": rt.tier_table()}


class LocalProfiler:
    """The profile in this process, on a loaded runtime (``profile_latency.executor: local``); the Ray executor
    (:class:`knobctl.latency.ray_profiler.RayProfiler`) has the same methods."""

    def __init__(self, rt: Runtime, grid: KnobGrid, p: ProfileParams, seed: int, worker: int = 0):
        rt.validate_grid(grid)
        self.rt = rt
        self.profiler = Profiler.for_runtime(rt, grid.configs(), p, seed, worker)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        info = profile_info(self.rt, self.profiler.tag)
        return {**info, "workers": [{k: info[k] for k in ("worker", "host", "device")}]}

    def run(self, store: Any, progress: bool = True) -> pd.DataFrame:
        return self.profiler.run(store, progress)
