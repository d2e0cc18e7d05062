"""The accuracy table's parts on Ray (``accuracy_table.executor: ray``), for tables that outgrow one machine.

The unit of work is the local run's part (:class:`knobctl.table.accuracy_table.PartPlan`): each part is one
call on a Ray actor that loaded the model once; its rows and features come back to the driver, which
writes the part files atomically exactly as the local run does, so resuming, damaged-part recovery and
the merge are the local run's own, and the table comes out byte for byte the same.

Workers load the model from the path the stage was given, and import knobctl from the driver's checkout
(``PYTHONPATH`` in the job's runtime environment): on a cluster, the repository and the model folder must be
reachable at the same path on every node (a shared filesystem). Shipping the weights through Ray's object
store instead would copy a 60 GB checkpoint into every node's object store memory before the first part.

Fault tolerance is Ray's: an actor whose process dies is restarted (it reloads the model) and the call it
was running is retried, up to ``max_retries`` times each; a part's rows depend only on its samples, so a
retried part gives the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import pandas as pd

from knobctl.execution import progress_bar
from knobctl.io import write_parquet_atomic
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.params import InputError
from knobctl.table.accuracy_table import PartPlan, parts_to_run, table_info
from knobctl.table.rollouts import RolloutParams, rollout_part


class RolloutWorker:
    """One Ray actor: the model loaded once, answering whole parts (wrapped by ``ray.remote`` at run time, so
    importing this module never needs Ray)."""

    def __init__(self, model: str, load: Mapping[str, Any], num_threads: int):
        from knobctl.execution import use_threads
        from knobctl.model.runtime import load_runtime

        use_threads(num_threads)
        self.rt = load_runtime(model, **load)

    def pid(self) -> int:
        return os.getpid()

    def describe(self, grid: KnobGrid, p: RolloutParams) -> dict[str, Any]:
        return table_info(self.rt, grid, p)

    def run_part(self, index: int, part: pd.DataFrame, configs: Sequence[KnobConfig], p: RolloutParams
                 ) -> tuple[int, pd.DataFrame, pd.DataFrame]:
        rows, feats = rollout_part(self.rt, part, configs, p)
        return index, rows, feats


class RayExecutor:
    """Ray actors that each loaded the model, for the accuracy table's parts; a context manager that starts a
    local Ray for the run (``address: null``) or joins a cluster, and leaves it as it found it."""

    def __init__(self, model: str, load: Mapping[str, Any], p: RolloutParams):
        import ray

        self.p, settings = p, p.ray
        src = str(Path(__file__).resolve().parents[2])  # workers import this checkout's knobctl, as the driver does
        self.started = not ray.is_initialized()
        if self.started:
            path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
            ray.init(address=settings.address, include_dashboard=False, logging_level="warning",
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 1) // settings.num_cpus_per_worker)
        if settings.num_gpus_per_worker:
            fits = min(fits, int(resources.get("GPU", 0) // settings.num_gpus_per_worker))
        if fits < 1:
            self.close()
            raise InputError(f"the Ray cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} GPUs: "
                             f"not one worker of accuracy_table.ray (num_cpus_per_worker "
                             f"{settings.num_cpus_per_worker}, num_gpus_per_worker {settings.num_gpus_per_worker}) fits")
        worker = ray.remote(num_cpus=settings.num_cpus_per_worker, num_gpus=settings.num_gpus_per_worker,
                            max_restarts=settings.max_retries, max_task_retries=settings.max_retries)(RolloutWorker)
        threads = p.num_threads or settings.num_cpus_per_worker  # 0 ("every core") would oversubscribe a node
        self.actors = [worker.remote(model, dict(load), threads) for _ in range(settings.num_workers or fits)]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def describe(self, grid: KnobGrid) -> dict[str, Any]:
        """:func:`knobctl.table.accuracy_table.table_info` from a worker (the driver never loads the model)."""
        import ray

        try:
            return ray.get(self.actors[0].describe.remote(grid, self.p))
        except ray.exceptions.RayTaskError as exc:  # the worker's own error (a grid the model cannot run), unwrapped
            raise exc.as_instanceof_cause() from None

    def run(self, samples: pd.DataFrame, configs: Sequence[KnobConfig], plan: PartPlan, parts: Sequence[int],
            progress: bool = True, on_part: Callable[[int], None] | None = None) -> int:
        """The parts of ``parts`` not done yet, as the local run does them; returns the rollouts run.
        ``on_part(i)`` is called once part ``i`` is written."""
        from ray.util import ActorPool

        todo = parts_to_run(plan, parts)
        pool = ActorPool(self.actors)
        for i in todo:
            pool.submit(lambda actor, job: actor.run_part.remote(*job), (i, plan.part(samples, i), list(configs), self.p))
        ran = 0
        with progress_bar(total=len(todo), desc=f"rollout parts on {len(self.actors)} Ray workers", unit="part",
                          disable=not progress) as bar:
            while pool.has_next():
                i, rows, feats = pool.get_next_unordered()
                write_parquet_atomic(plan.features_path(i), feats)  # features first, rows last: as the local run
                write_parquet_atomic(plan.rows_path(i), rows)
                ran += len(rows)
                bar.update(1)
                if on_part is not None:
                    on_part(i)
        return ran
