"""The latency profile on a local Ray cluster with 2 CPU workers: the local run's schedule, every row tagged with
its worker's device, resumed rounds kept, killed workers restarted, a mix of devices refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from knobctl.cluster import RayParams
from knobctl.io import read_provenance
from knobctl.knobs import KnobGrid
from knobctl.latency.profile_run import KEY, LocalProfiler
from knobctl.latency.profiling import ROW_COLUMNS, ProfileParams, cases_for, schedule
from knobctl.latency.ray_profiler import RayProfiler, shared_cpu_hosts
from knobctl.params import InputError
from knobctl.parts import PartStore
from tests.conftest import ROOT, kill_once

GRID = {"tiers": ["low", "high"], "top_k": [4, 8], "num_blocks": [12, 16]}
PROFILE = {"source": "tiny", "device": "cpu", "text_tokens": [3], "output_tokens": [1, 3], "rounds": 4,
           "warmup_rounds": 1, "flush_every": 5}


def needs_ray():
    return pytest.importorskip("ray", reason="the ray extra: pip install -c constraints.txt -e '.[ray]'")


def test_the_stage_on_ray_measures_the_local_schedule_with_rows_tagged_by_device(tmp_path):
    needs_ray()
    params = {"seed": 3, "knobs": GRID, "profile_latency": {**PROFILE, "executor": "ray", "ray": {"num_workers": 2}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/profile_latency.py"), "--params", "params.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "data/profile/latency.parquet")
    grid = KnobGrid(**{k: tuple(v) for k, v in GRID.items()})
    cases = cases_for(grid.configs(), PROFILE["text_tokens"], PROFILE["output_tokens"])
    expected = [(r, pos, *c.key) for r, pos, c in schedule(cases, PROFILE["rounds"], seed=3)]
    assert list(rows[["round", "order", *KEY[1:]]].itertuples(index=False, name=None)) == expected
    assert rows["error"].isna().all() and (rows["total_ms"] > 0).all()
    assert rows["device"].nunique() == 1 and rows["host"].nunique() == 1
    assert sorted(rows["worker"].unique()) == [0, 1]  # the rounds were spread over both workers
    assert (rows.groupby("round")["worker"].nunique() == 1).all()  # a round is one worker's
    meta = read_provenance(tmp_path / "data/profile/latency.parquet")
    assert meta["executor"] == "ray" and [w["worker"] for w in meta["workers"]] == [0, 1]
    assert json.loads((tmp_path / "data/profile/stats.json").read_text())["workers"] == 2
    assert "CPU workers share hosts" in proc.stderr and "x 2 Ray workers" in proc.stdout


def test_ray_resumes_stored_rounds_and_survives_killed_workers(tmp_path):
    """Round 0 is stored by a local run first and kept as it is; both workers are killed (SIGKILL) as their first
    round lands, are restarted, and the profile still holds every scheduled measurement once."""
    from tests.conftest import make_runtime

    needs_ray()
    grid = KnobGrid(**{k: tuple(v) for k, v in GRID.items()})
    p = ProfileParams(**{**PROFILE, "text_tokens": (3,), "output_tokens": (1, 3)}, executor="ray",
                      ray=RayParams(num_workers=2, max_retries=2))
    store = PartStore(tmp_path / "parts", p.flush_every, ROW_COLUMNS)
    threads = torch.get_num_threads()
    torch.set_num_threads(p.num_threads)  # as the stage and each worker run: a CPU's device name holds its threads
    try:
        local = LocalProfiler(make_runtime(), grid, p, seed=0)
        for rnd, pos, case in local.profiler.plan.pending(set()):
            if rnd == 0:
                store.append(local.profiler.row(rnd, pos, case))
        store.flush()
    finally:
        torch.set_num_threads(threads)
    first = store.read()
    killed: list[int] = []
    with RayProfiler(p, grid, None, seed=0) as ray_profiler:
        before = ray_profiler.worker_pids()
        rows = ray_profiler.run(store, progress=False, on_round=kill_once(before, killed))
        after = ray_profiler.worker_pids()
    assert killed and not set(after) & set(before)  # the workers died and came back as new processes
    assert len(rows) == len(grid.configs()) * 2 * p.rounds and rows["error"].isna().all()
    kept = rows[rows["round"] == 0].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first.sort_values("order").reset_index(drop=True))  # not measured again
    assert set(rows.loc[rows["round"] > 0, "round"]) == {1, 2, 3}


class FakePool:
    def __init__(self, infos):
        self.infos = infos

    def call_all(self, method):
        return self.infos


def info(device: str, host: str, worker: int, device_type: str = "cuda") -> dict:
    return {"device": device, "device_type": device_type, "tiers": {}, "host": host, "worker": worker,
            "workers": [{"worker": worker, "host": host, "device": device}]}


def test_workers_on_devices_of_two_names_are_refused_before_measuring():
    profiler = RayProfiler.__new__(RayProfiler)
    profiler.pool = FakePool([info("NVIDIA H100 80GB HBM3", "a", 0), info("NVIDIA H100 80GB HBM3", "a", 1),
                              info("NVIDIA A100-SXM4-80GB", "b", 2)])
    with pytest.raises(InputError, match=r"2 kinds of device: NVIDIA H100 80GB HBM3 \(2 workers\), NVIDIA "
                                         r"A100-SXM4-80GB \(1 workers\).*accelerator_type"):
        profiler.describe()
    profiler.pool = FakePool([info("NVIDIA H100 80GB HBM3", "a", 0), info("NVIDIA H100 80GB HBM3", "a", 1)])
    described = profiler.describe()
    assert len(described["workers"]) == 2 and described["shared_hosts"] == {}  # GPU workers own their device


def test_only_cpu_workers_sharing_a_host_are_reported():
    workers = [{"host": "a"}, {"host": "a"}, {"host": "b"}]
    assert shared_cpu_hosts(workers, "cpu") == {"a": 2}
    assert shared_cpu_hosts(workers, "cuda") == {}
