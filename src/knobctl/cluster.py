"""Ray actors for the stages that scale out (``executor: ray``): settings, start-up and a pool of workers.

The accuracy table (:mod:`knobctl.table.ray_executor`) and the latency profile
(:mod:`knobctl.latency.ray_profiler`) share this: a stage either starts a local Ray for its run
(``address: null``) and stops it afterwards, or joins a cluster; it starts one actor class on as many
workers as fit, and hands them jobs through Ray's ``ActorPool``.

Workers import knobctl from the driver's checkout (its ``src`` on ``PYTHONPATH`` in the job's runtime
environment) and load the model from the path the stage was given: on a cluster, the repository and the
model folder must be reachable at the same path on every node. Fault tolerance is Ray's: an actor whose
process dies is restarted and the call it was running is retried, ``max_retries`` times each.

Ray itself is imported only when a pool starts, so the default install (no ``ray`` extra) imports this
module freely.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from knobctl.params import InputError, require, require_int

EXECUTORS = ("local", "ray")
#: A section's keys that pick where its work runs, not what it computes: kept out of the run keys (and, for
#: the accuracy table, out of the metadata), so a rerun under the other executor resumes the same parts.
EXECUTOR_KEYS = ("executor", "ray")


@dataclass(frozen=True)
class RayParams:
    """A section's ``ray`` block: where and how wide its Ray workers run. Checked by :meth:`check` with the
    owning section's name, since two sections share it."""

    address: str | None = None  # None: a local Ray started by the stage, sized to the machine; "auto": a cluster's
    num_workers: int | None = None  # None: as many as the cluster's CPUs (or GPUs) hold
    num_cpus_per_worker: int = 1
    num_gpus_per_worker: float = 0.0
    accelerator_type: str | None = None  # only nodes whose GPUs Ray labels so (H100, A100, ...)
    max_retries: int = 3  # restarts of a dead worker and retries of the job it was running

    def check(self, where: str) -> None:
        require(self.address is None or isinstance(self.address, str), f"{where}.address", self.address,
                "use null (a local Ray started by the stage), auto (the cluster this node belongs to) or ray://host:port")
        if self.num_workers is not None:
            require_int(self.num_workers, f"{where}.num_workers")
        require_int(self.num_cpus_per_worker, f"{where}.num_cpus_per_worker")
        require(isinstance(self.num_gpus_per_worker, (int, float)) and self.num_gpus_per_worker >= 0,
                f"{where}.num_gpus_per_worker", self.num_gpus_per_worker, "use a number >= 0")
        require(self.accelerator_type is None or (isinstance(self.accelerator_type, str) and self.num_gpus_per_worker
                                                  > 0), f"{where}.accelerator_type", self.accelerator_type,
                "use null, or a GPU type such as H100 together with num_gpus_per_worker > 0")
        require_int(self.max_retries, f"{where}.max_retries", 0)

    def worker_threads(self, num_threads: int) -> int:
        """A worker's torch threads for a section's ``num_threads``: 0 ("every core") would have each worker
        spread over the whole node, so it means the worker's own CPUs."""
        return num_threads or self.num_cpus_per_worker


def unwrap(exc: Exception) -> Exception:
    """A worker's own exception (a grid the model cannot run, a bad path) rather than Ray's wrapper of it."""
    import ray

    if isinstance(exc, ray.exceptions.RayTaskError):
        return exc.as_instanceof_cause()
    return exc


class RayWorker:
    """What every worker class a :class:`RayPool` starts answers, besides its own work."""

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``worker`` (a plain class, wrapped by ``ray.remote`` here) started on as many Ray workers as fit, or
    ``num_workers``, or at most ``limit``; ``args(i)`` gives worker ``i``'s constructor arguments. A context
    manager that leaves Ray as it found it."""

    def __init__(self, worker: type, args: Callable[[int], Sequence[Any]], settings: RayParams, where: str,
                 limit: int | None = None):
        import ray

        src = str(Path(__file__).resolve().parents[1])  # workers import this checkout's knobctl, as the driver does
        self.started = not ray.is_initialized()
        if self.started:
            path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
            ray.init(address=settings.address, include_dashboard=False, logging_level="warning",
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        try:
            count = self._count(ray.cluster_resources(), settings, where)
        except InputError:
            self.close()
            raise
        options: dict[str, Any] = {"num_cpus": settings.num_cpus_per_worker, "num_gpus": settings.num_gpus_per_worker,
                                   "max_restarts": settings.max_retries, "max_task_retries": settings.max_retries}
        if settings.accelerator_type:
            options["accelerator_type"] = settings.accelerator_type
        remote = ray.remote(**options)(worker)
        self.actors = [remote.remote(*args(i)) for i in range(min(count, limit or count))]

    @staticmethod
    def _count(resources: dict[str, float], s: RayParams, where: str) -> int:
        """How many workers to start: ``num_workers``, or as many as the cluster's resources hold."""
        fits = int(resources.get("CPU", 1) // s.num_cpus_per_worker)
        if s.num_gpus_per_worker:
            gpus = resources.get("GPU", 0)
            if s.accelerator_type:
                key = f"accelerator_type:{s.accelerator_type}"
                if key not in resources:
                    kinds = sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:"))
                    raise InputError(f"{where}.accelerator_type is {s.accelerator_type!r}, but the Ray cluster has no "
                                     f"such node (its GPU types: {', '.join(kinds) or 'none'})")
            fits = min(fits, int(gpus // s.num_gpus_per_worker))
        if fits < 1:
            raise InputError(f"the Ray cluster has {resources.get('CPU', 0)} CPUs and {resources.get('GPU', 0)} GPUs: "
                             f"not one worker of {where} (num_cpus_per_worker {s.num_cpus_per_worker}, "
                             f"num_gpus_per_worker {s.num_gpus_per_worker}) fits")
        return s.num_workers or fits

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every worker, in worker order; a worker's exception is raised as itself."""
        import ray

        try:
            return ray.get([getattr(a, method).remote(*args) for a in self.actors])
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    def map_unordered(self, method: str, jobs: Iterable[Sequence[Any]]) -> Iterator[Any]:
        """``method(*job)`` for every job, on whichever worker is free; results as they land."""
        import ray
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        for job in jobs:
            pool.submit(lambda actor, j: getattr(actor, method).remote(*j), job)
        while pool.has_next():
            try:
                result = pool.get_next_unordered()
            except ray.exceptions.RayTaskError as exc:
                raise unwrap(exc) from None
            yield result


class PoolExecutor:
    """A stage's Ray executor: owns its :class:`RayPool` for the length of a ``with`` block."""

    pool: RayPool

    @property
    def actors(self) -> list[Any]:
        return self.pool.actors

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.close()

    def worker_pids(self) -> list[int]:
        return self.pool.call_all("pid")
