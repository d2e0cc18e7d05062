"""Resume after a kill: a lost profile part is measured again, and the stage scripts survive SIGKILL.

The slow tests start a stage script in a temporary copy of the repository (tiny params, as in
test_pipeline.py), kill it with SIGKILL as soon as its resume state is on disk, rerun the same
command and compare the result with an uninterrupted run of the same stage.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.latency.profile_run import run_profile
from knobctl.latency.profiling import ROW_COLUMNS, Case, Timing, cases_for, schedule
from knobctl.parts import PartStore
from tests.conftest import copy_repo

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["round", "config", "text_tokens", "output_tokens"]


class Killed(BaseException):
    """The process dying mid-run (no ``except Exception`` in the library catches it)."""


def fake_measure(calls: list, kill_after: int | None = None):
    def measure(case: Case) -> Timing:
        calls.append(case.key)
        if kill_after is not None and len(calls) > kill_after:
            raise Killed
        k = case.knobs
        return Timing(1.0 + k.top_k / 10, 2.0 + k.num_blocks / 10 + case.text_tokens / 100, 0.5 + k.num_blocks / 20)

    return measure


def profile(measure, store: PartStore, cases: list[Case]) -> pd.DataFrame:
    return run_profile(measure, cases, rounds=3, warmup_rounds=0, seed=0, store=store,
                       input_tokens=lambda c: c.text_tokens + 3, visual_tokens=lambda c: 1, batch_size=1,
                       progress=False)


def test_a_deleted_profile_part_is_measured_again_and_no_part_is_overwritten(tmp_path):
    configs = [KnobConfig(t, k, b) for t in ("low", "high") for k in (4, 8) for b in (12, 16)]
    cases = cases_for(configs, [4, 8], [2])
    full = profile(fake_measure([]), PartStore(tmp_path / "whole", 5, ROW_COLUMNS), cases)
    assert len(full) == 3 * len(cases)

    cache = tmp_path / "cache"
    with pytest.raises(Killed):
        profile(fake_measure([], kill_after=23), PartStore(cache, 5, ROW_COLUMNS), cases)
    assert sorted(p.name for p in cache.glob("part-*")) == [f"part-{i:05d}.parquet" for i in range(4)]
    (cache / "part-00001.parquet").unlink()  # e.g. found damaged and removed, as its error message says
    kept = {p.name: p.read_bytes() for p in cache.glob("part-*")}

    calls: list = []
    resumed = profile(fake_measure(calls), PartStore(cache, 5, ROW_COLUMNS), cases)
    assert len(calls) == len(full) - 15  # the 5 lost rows and the 28 never measured, nothing else
    assert {p.name: p.read_bytes() for p in cache.glob("part-*") if p.name in kept} == kept  # none overwritten
    assert min(int(p.name[5:10]) for p in cache.glob("part-*") if p.name not in kept) == 4  # new numbers only
    expected = {(r, *c.key) for r, _, c in schedule(cases, 3, 0)}
    got = list(resumed[KEYS].itertuples(index=False, name=None))
    assert len(got) == len(expected) and set(got) == expected  # every (round, case) once
    pd.testing.assert_frame_equal(resumed, full)


# ---- SIGKILL of the stage scripts -------------------------------------------------------------------------------

TINY = {
    "knobs": {"top_k": [4, 8], "num_blocks": [12, 16]},
    "prepare_data": {"max_train_images": 24, "max_test_images": 6, "val_fraction": 0.25},
    "model": {"dims": {"hidden_size": 32, "expert_intermediate": 16, "vision_hidden": 32, "vision_layers": 1,
                       "vision_intermediate": 64, "num_heads": 2, "vision_heads": 2}},
    # enough steps after the first checkpoint that the kill lands mid-run
    "train_base": {"steps": 12, "batch_size": 8, "checkpoint_every": 3, "eval_batch_size": 64,
                   "vision_warmstart_steps": 24, "eval_max_samples": 16},
    "profile_latency": {"text_tokens": [3, 6], "output_tokens": [2, 3], "rounds": 2, "warmup_rounds": 0,
                        "flush_every": 4},
    "accuracy_table": {"num_samples": 10, "part_size": 2, "batch_size": 2},
}


def env_for(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo / "src"), "OMP_NUM_THREADS": "1"}


def run(cmd: list[str], repo: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def kill_when(cmd: list[str], repo: Path, ready, timeout: float = 300.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (its resume state is on disk)."""
    log = repo / "killed.log"  # a file, not a pipe: an unread pipe that fills up would stall the stage
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=repo, env=env_for(repo), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(cmd)} ended (rc {proc.returncode}) before its resume state appeared; "
                            f"make its tiny params larger.\n{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"no resume state from {' '.join(cmd)} after {timeout} s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{' '.join(cmd)} finished before the kill; make its params larger"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A copy of the repository with tiny params, its data prepared and a base model trained (uninterrupted)."""
    dst = copy_repo(tmp_path_factory.mktemp("resume"), TINY)
    run([sys.executable, "stages/prepare_data.py"], dst)
    run([sys.executable, "stages/train_base.py"], dst)
    return dst


def checkpoint_ready(folder: Path):
    return lambda: (folder / "state.json").exists()


def first_file(cache: Path, pattern: str):
    return lambda: any(cache.glob(f"*/{pattern}"))


@pytest.mark.slow
def test_train_base_killed_resumes_to_the_same_weights(repo):
    ck = repo / ".knobctl_cache/train_base_killed"
    cmd = [sys.executable, "stages/train_base.py", "--out", "models/base_killed", "--checkpoint", str(ck),
           "--metrics", "metrics/base_killed.json", "--plots", "plots/base/killed.csv", "--summary",
           "plots/base/killed.json"]
    kill_when(cmd, repo, checkpoint_ready(ck))
    state = json.loads((ck / "state.json").read_text())
    run(cmd, repo)
    metrics = json.loads((repo / "metrics/base_killed.json").read_text())
    run_ = json.loads((repo / "plots/base/killed.json").read_text())
    # it went on from the checkpoint the kill left, in the warm-start or in the VLM steps
    if state["phase"] == "vision_warmstart":
        assert run_["resumed_from_warmstart_step"] == state["step"] > 0 and run_["resumed_from_step"] == 0
    else:
        assert run_["resumed_from_step"] == state["step"] and run_["resumed_from_warmstart_step"] == 24
    assert (repo / "models/base_killed/model.safetensors").read_bytes() == \
        (repo / "models/base/model.safetensors").read_bytes()
    reference = json.loads((repo / "metrics/base.json").read_text())
    assert metrics["headline"] == reference["headline"]
    assert (repo / "plots/base/killed.csv").read_text() == (repo / "plots/base/val_corners.csv").read_text()
    assert not ck.exists()


@pytest.mark.slow
def test_accuracy_table_killed_resumes_to_the_same_bytes(repo):
    def stage(name: str) -> list[str]:
        return [sys.executable, "stages/accuracy_table.py", "--out", f"data/rollouts_{name}", "--cache",
                f".knobctl_cache/rollouts_{name}", "--metrics", f"metrics/accuracy_table_{name}.json",
                "--plots", f"plots/accuracy_table_{name}"]

    whole = run(stage("whole"), repo).stdout
    assert "120 run now" in whole  # 10 samples x 12 configs, all in this run
    cache = repo / ".knobctl_cache/rollouts_killed"
    kill_when(stage("killed"), repo, first_file(cache, "rows-*.parquet"))
    done = len(list(cache.glob("*/rows-*.parquet")))
    assert 0 < done < 5
    resumed = run(stage("killed"), repo).stdout
    assert f"{(5 - done) * 2 * 12} run now" in resumed  # only the parts the kill left undone
    for name in ("rollouts.parquet", "features.parquet"):
        assert (repo / "data/rollouts_killed" / name).read_bytes() == (repo / "data/rollouts_whole" / name).read_bytes()


@pytest.mark.slow
def test_profile_latency_killed_keeps_its_parts_and_ends_with_every_row(repo):
    cmd = [sys.executable, "stages/profile_latency.py", "--cache", ".knobctl_cache/profile_killed"]
    cache = repo / ".knobctl_cache/profile_killed"
    kill_when(cmd, repo, first_file(cache, "part-*.parquet"))
    kept = PartStore(next(cache.iterdir())).read()
    assert 0 < len(kept) < 12 * 2 * 2 * 2
    run(cmd, repo)
    rows = pd.read_parquet(repo / "data/profile/latency.parquet")
    # An uninterrupted run measures every (round, configuration, text length, output length) once; its keys
    # follow from the params, which spares a third start of the stage (most of its time is imports).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    labels = [k.label for k in KnobGrid.from_params(params["knobs"]).configs()]
    p = params["profile_latency"]
    uninterrupted = sorted(itertools.product(range(p["rounds"]), labels, p["text_tokens"], p["output_tokens"]))
    assert len(uninterrupted) == 12 * 2 * 2 * 2
    assert sorted(rows[KEYS].itertuples(index=False, name=None)) == uninterrupted
    # the rows measured before the kill are kept as they were (timings never repeat exactly), not measured again
    merged = kept.merge(rows, on=KEYS, suffixes=("_kept", ""))
    assert len(merged) == len(kept) and (merged["total_ms_kept"] == merged["total_ms"]).all()
    assert not any(cache.iterdir())  # the parts are cleared once merged
