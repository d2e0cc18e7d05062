"""The accuracy table's parts on Ray (``accuracy_table.executor: ray``), for tables that outgrow one machine.

The unit of work is the local run's part (:class:`knobctl.table.accuracy_table.PartPlan`): each part is one
call on a Ray actor that loaded the model once; its rows and features come back to the driver, which
writes the part files atomically exactly as the local run does, so resuming, damaged-part recovery and
the merge are the local run's own, and the table comes out byte for byte the same.

Workers load the model from the path the stage was given and import the driver's checkout
(:mod:`knobctl.cluster`): on a cluster, the repository and the model folder must be reachable at the same
path on every node (a shared filesystem). Shipping the weights through Ray's object store instead would
copy a 60 GB checkpoint into every node's object store memory before the first part.

A dead actor is restarted (it reloads the model) and its part retried; a part's rows depend only on its
samples, so a retried part gives the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from knobctl.cluster import PoolExecutor, RayPool, RayWorker
from knobctl.execution import progress_bar
from knobctl.io import write_parquet_atomic
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.table.accuracy_table import PartPlan, parts_to_run, table_info
from knobctl.table.rollouts import RolloutParams, rollout_part


class RolloutWorker(RayWorker):
    """One Ray actor: the model loaded once, answering whole parts (wrapped by ``ray.remote`` at run time, so
    importing this module never needs Ray)."""

    def __init__(self, model: str, load: Mapping[str, Any], num_threads: int):
        from knobctl.execution import use_threads
        from knobctl.model.runtime import load_runtime

        use_threads(num_threads)
        self.rt = load_runtime(model, **load)

    def describe(self, grid: KnobGrid, p: RolloutParams) -> dict[str, Any]:
        return table_info(self.rt, grid, p)

    def run_part(self, index: int, part: pd.DataFrame, configs: Sequence[KnobConfig], p: RolloutParams
                 ) -> tuple[int, pd.DataFrame, pd.DataFrame]:
        rows, feats = rollout_part(self.rt, part, configs, p)
        return index, rows, feats


class RayExecutor(PoolExecutor):
    """Ray actors that each loaded the model, for the accuracy table's parts (:class:`knobctl.cluster.RayPool`:
    a local Ray for the run, or a cluster joined)."""

    def __init__(self, model: str, load: Mapping[str, Any], p: RolloutParams):
        self.p = p
        threads = p.ray.worker_threads(p.num_threads)
        self.pool = RayPool(RolloutWorker, lambda i: (model, dict(load), threads), p.ray, "accuracy_table.ray")

    def describe(self, grid: KnobGrid) -> dict[str, Any]:
        """:func:`knobctl.table.accuracy_table.table_info` from a worker (the driver never loads the model)."""
        return self.pool.call_all("describe", grid, self.p)[0]

    def run(self, samples: pd.DataFrame, configs: Sequence[KnobConfig], plan: PartPlan, parts: Sequence[int],
            progress: bool = True, on_part: Callable[[int], None] | None = None) -> int:
        """The parts of ``parts`` not done yet, as the local run does them; returns the rollouts run.
        ``on_part(i)`` is called once part ``i`` is written."""
        todo = parts_to_run(plan, parts)
        jobs = ((i, plan.part(samples, i), list(configs), self.p) for i in todo)
        ran = 0
        with progress_bar(total=len(todo), desc=f"rollout parts on {len(self.actors)} Ray workers", unit="part",
                          disable=not progress) as bar:
            for i, rows, feats in self.pool.map_unordered("run_part", jobs):
                write_parquet_atomic(plan.features_path(i), feats)  # features first, rows last: as the local run
                write_parquet_atomic(plan.rows_path(i), rows)
                ran += len(rows)
                bar.update(1)
                if on_part is not None:
                    on_part(i)
        return ran
