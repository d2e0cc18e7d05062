"""The latency profile on Ray (``profile_latency.executor: ray``): the rounds spread over identical devices.

The unit of work is a round: every case once, in the round's shuffled order, the same schedule as the local
run. Each round is one call on a Ray actor that loaded the model once and warmed its device up before its
first round; the rows come back to the driver, which writes them to the run's part files, so a rerun skips
the rounds already measured (a round in flight when the driver stops is measured again). A worker that dies
is restarted and its round measured again from the start.

Every row is tagged with the worker's device name, host and index, and a profile holds one device name only:
the stage asks every worker for its device before measuring and refuses a mix (an A100 round would pass for
an H100 round), naming ``ray.accelerator_type`` as the way to keep to one kind. Interleaving keeps its
point across workers: each round is still every case in random order, so a slow device or a slow spell
weighs on all configurations alike, and the drift correction (:mod:`knobctl.latency.stats`) follows each
worker's own timeline.

What a round measures must be one worker's alone: GPU workers take a whole GPU each (``num_gpus_per_worker:
1``); CPU workers that share a host contend for its cores, caches and memory bandwidth, so their timings are
not what one process sees. The stage says so when it happens; for a profile to deploy by, give each CPU
worker a whole node.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pandas as pd

from knobctl.cluster import PoolExecutor, RayPool, RayWorker
from knobctl.execution import progress_bar
from knobctl.knobs import KnobGrid
from knobctl.latency.profile_run import LocalProfiler, ProfilePlan
from knobctl.latency.profiling import Case, ProfileParams
from knobctl.params import InputError


class ProfileWorker(RayWorker):
    """One Ray actor: the model loaded once (on the first call, so that a bad source or grid comes back as its
    own error), measuring whole rounds (wrapped by ``ray.remote`` at run time: importing this never needs Ray)."""

    def __init__(self, p: ProfileParams, grid: KnobGrid, tier_tokens: Mapping[str, int] | None, seed: int,
                 index: int, decode: str = "eager"):
        self.args = (p, grid, tier_tokens, seed, index, decode)
        self._local: LocalProfiler | None = None

    def _profiler(self) -> LocalProfiler:
        if self._local is None:
            from knobctl.latency.profiling import load_profiled_runtime

            p, grid, tier_tokens, seed, index, decode = self.args
            self._local = LocalProfiler(load_profiled_runtime(p, tier_tokens, decode), grid, p, seed, worker=index)
        return self._local

    def describe(self) -> dict[str, Any]:
        return self._profiler().describe()

    def run_round(self, rnd: int, items: list[tuple[int, Case]]) -> list[dict[str, Any]]:
        """Round ``rnd``'s (position, case) items, in order; the warm-up first if this process has not run it."""
        profiler = self._profiler().profiler
        profiler.warm_up(progress=False)
        return [profiler.row(rnd, pos, case) for pos, case in items]


def shared_cpu_hosts(workers: list[dict[str, Any]], device_type: str) -> dict[str, int]:
    """Hosts running more than one CPU worker, with their counts (GPU workers each own a device)."""
    if device_type != "cpu":
        return {}
    counts = Counter(w["host"] for w in workers)
    return {host: n for host, n in counts.items() if n > 1}


class RayProfiler(PoolExecutor):
    """Ray actors of one device name, each measuring whole rounds (:class:`knobctl.cluster.RayPool`: a local Ray
    for the run, or a cluster joined); the same methods as :class:`knobctl.latency.profile_run.LocalProfiler`.
    No more workers start than there are rounds."""

    def __init__(self, p: ProfileParams, grid: KnobGrid, tier_tokens: Mapping[str, int] | None, seed: int,
                 decode: str = "eager"):
        self.plan = ProfilePlan.of(grid.configs(), p, seed)
        worker_p = replace(p, num_threads=p.ray.worker_threads(p.num_threads))
        self.pool = RayPool(ProfileWorker, lambda i: (worker_p, grid, tier_tokens, seed, i, decode), p.ray,
                            "profile_latency.ray", limit=p.rounds)
        self.device: str | None = None  # the workers' one device name, once described

    def describe(self) -> dict[str, Any]:
        """The first worker's runtime, and every worker's device; a mix of device names is refused here, before
        any round is measured."""
        infos = self.pool.call_all("describe")
        workers = [w for info in infos for w in info["workers"]]
        names = Counter(w["device"] for w in workers)
        if len(names) > 1:
            raise InputError(f"the Ray workers run on {len(names)} kinds of device: "
                             + ", ".join(f"{name} ({n} workers)" for name, n in names.items())
                             + ". A profile is one device's clock: set profile_latency.ray.accelerator_type to keep "
                             "to one GPU type, or run on identical nodes")
        shared = shared_cpu_hosts(workers, infos[0]["device_type"])
        if shared:
            print(f"profile_latency: CPU workers share hosts ({', '.join(f'{h}: {n}' for h, n in shared.items())}); "
                  "they contend for cores and memory bandwidth, so their timings are not one process's alone. For a "
                  "profile to deploy by, give each worker a whole node (ray.num_cpus_per_worker = its CPUs)",
                  file=sys.stderr)
        self.device = infos[0]["device"]
        return {**infos[0], "workers": workers, "shared_hosts": shared}

    def run(self, store: Any, progress: bool = True, on_round: Callable[[int], None] | None = None) -> pd.DataFrame:
        """Every round not yet complete in ``store`` (a PartStore), each on a free worker; then the whole checked
        profile. ``on_round(r)`` is called once round ``r``'s rows are stored."""
        done = self.plan.resume(store, self.device or self.describe()["device"])
        rounds: dict[int, list[tuple[int, Case]]] = {}
        for rnd, pos, case in self.plan.pending(done):
            rounds.setdefault(rnd, []).append((pos, case))
        todo = sum(len(items) for items in rounds.values())
        with progress_bar(total=len(done) + todo, initial=len(done), disable=not progress,
                          desc=f"profile on {len(self.actors)} Ray workers") as bar:
            for rows in self.pool.map_unordered("run_round", sorted(rounds.items())):
                for row in rows:
                    store.append(row)
                store.flush()  # a round is stored whole, so a rerun resumes from the rounds not stored
                bar.update(len(rows))
                if on_round is not None:
                    on_round(int(rows[0]["round"]))
        return self.plan.finish(store)
