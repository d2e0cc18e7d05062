"""The accuracy table on a local Ray cluster with 2 CPU workers: the same bytes as the local executor, even when
the workers are killed mid-run."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from knobctl.cluster import RayParams
from knobctl.knobs import KnobGrid
from knobctl.model.runtime import load_runtime, save_runtime
from knobctl.table.accuracy_table import LocalExecutor, PartPlan, merge_parts
from knobctl.table.rollouts import RolloutParams, select_configs
from tests.conftest import ROOT, kill_once, make_runtime, vqa_frame

ray = pytest.importorskip("ray", reason="the ray extra: pip install -c constraints.txt -e '.[ray]'")

GRID = {"tiers": ["low", "high"], "top_k": [4, 8], "num_blocks": [12, 16]}
TABLE = {"num_samples": None, "part_size": 3, "batch_size": 3, "num_threads": 1, "max_new_tokens": 3}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A saved tiny checkpoint, a 12-question val split and params for both executors."""
    path = tmp_path_factory.mktemp("ray")
    save_runtime(make_runtime(seed=4), path / "ckpt")
    (path / "data").mkdir()
    vqa_frame(12, seed=2).to_parquet(path / "data" / "val.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["knobs"] = GRID
    params["accuracy_table"] = {**params["accuracy_table"], **TABLE}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage(workdir, name: str, *overrides: str) -> str:
    cmd = [sys.executable, str(ROOT / "stages/accuracy_table.py"), "--params", "params.yaml", "--model", "ckpt",
           "--data", "data", "--out", f"out_{name}/rollouts", "--metrics", f"out_{name}/metrics.json", "--plots",
           f"out_{name}/plots", "--cache", f"cache_{name}", "--set", *overrides]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_ray_with_two_cpu_workers_writes_the_local_table_byte_for_byte(workdir):
    """As the defaults run: the local process on every core's threads, each worker on its one CPU's."""
    stage(workdir, "local", "executor=local", "num_threads=0")
    printed = stage(workdir, "ray", "executor=ray", "num_threads=0", "ray={num_workers: 2}")
    for name in ("rollouts/rollouts.parquet", "rollouts/features.parquet", "rollouts/summary.json", "metrics.json",
                 "plots/per_config.csv"):
        assert (workdir / "out_ray" / name).read_bytes() == (workdir / "out_local" / name).read_bytes(), name
    rows = pd.read_parquet(workdir / "out_ray/rollouts/rollouts.parquet")
    assert len(rows) == 12 * 8 and rows["error"].isna().all() and "96 run now" in printed


def test_workers_killed_mid_run_are_restarted_and_the_table_is_the_same(workdir, tmp_path):
    """Both workers are killed (SIGKILL) as the first part lands, while the others are in flight: Ray restarts
    them, retries their parts, and the merged table equals the local one."""
    grid = KnobGrid(**{k: tuple(v) for k, v in GRID.items()})
    p = RolloutParams(**TABLE, executor="ray", ray=RayParams(num_workers=2, max_retries=2))
    samples = vqa_frame(12, seed=2)
    configs = select_configs(grid, None)
    load = {"device": "cpu"}
    local = PartPlan(tmp_path / "local", len(samples), p.part_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(p.num_threads)  # as each worker runs
    try:
        with LocalExecutor(load_runtime(workdir / "ckpt", **load), p) as executor:
            executor.run(samples, configs, local, range(local.num_parts), progress=False)
    finally:
        torch.set_num_threads(threads)
    from knobctl.table.ray_executor import RayExecutor

    plan = PartPlan(tmp_path / "ray", len(samples), p.part_size)
    killed: list[int] = []
    with RayExecutor(str(workdir / "ckpt"), load, p) as executor:
        before = executor.worker_pids()
        ran = executor.run(samples, configs, plan, range(plan.num_parts), progress=False, on_part=kill_once(before, killed))
        after = executor.worker_pids()
    assert killed and not set(after) & set(before)  # the workers died and came back as new processes
    assert ran == 12 * len(configs)
    for ours, theirs in zip(merge_parts(plan), merge_parts(local)):
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
