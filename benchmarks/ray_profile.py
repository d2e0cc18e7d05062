"""The latency profile with 1 local process against 2 Ray CPU workers on one machine, side by side (issue 19).

    python benchmarks/ray_profile.py --root <a repository with dvc repro outputs> [--repeats R] [--rounds N]

Runs ``stages/profile_latency.py`` of ``--root`` on its params (models/base) into a temporary folder,
alternating ``executor: local`` (one process of 1 torch thread, the default) and ``executor: ray`` (a local
Ray started by the stage, 2 workers of 1 CPU and 1 thread each, measuring rounds at the same time),
``--repeats`` times each. It prints the median wall time of each (the whole stage, Ray's start included)
and how far the concurrent workers move the timings: per part, the median over (configuration, lengths)
cells of the Ray profile's cell median over the local profile's, with the same ratio between two local
runs as the noise floor. On one machine the two workers share its cores' caches and memory bandwidth, so
a ratio above the floor is the distortion docs/STAGES.md ("Profiles on Ray") warns of.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

EXECUTORS = {
    "local": ["executor=local", "num_threads=1"],
    "ray": ["executor=ray", "num_threads=1", "ray={num_workers: 2, num_cpus_per_worker: 1}"],
}
PARTS = ["vision_ms", "prefill_ms", "decode_ms_per_token", "total_ms"]
CELL = ["config", "text_tokens", "output_tokens"]


def run(root: Path, work: Path, name: str, i: int, rounds: int | None) -> tuple[float, pd.DataFrame]:
    out = work / f"{name}-{i}"
    sets = EXECUTORS[name] + ([f"rounds={rounds}"] if rounds else [])
    cmd = [sys.executable, str(root / "stages/profile_latency.py"), "--out", str(out / "profile"), "--metrics",
           str(out / "metrics.json"), "--cache", str(out / "cache"), "--set", *sets]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = pd.read_parquet(out / "profile/latency.parquet")
    if name == "ray" and rows["worker"].nunique() != 2:
        raise SystemExit(f"the Ray profile ran on {rows['worker'].nunique()} workers, not 2")
    return wall, rows


def cell_medians(runs: list[pd.DataFrame]) -> pd.DataFrame:
    """Per cell, the median of every part over all the runs' rounds."""
    rows = pd.concat(runs, ignore_index=True)
    return rows[rows["error"].isna()].groupby(CELL)[PARTS].median()


def median_ratio(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    ratio = a / b.reindex(a.index)
    return {part: round(float(ratio[part].median()), 3) for part in PARTS}


def rank_agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Spearman correlation of the cells' total_ms: does the slowdown keep the configurations' order?"""
    return round(float(a["total_ms"].rank().corr(b["total_ms"].reindex(a.index).rank())), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=None, help="profile_latency.rounds (default: params.yaml's)")
    args = ap.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    rows: dict[str, list[pd.DataFrame]] = {name: [] for name in EXECUTORS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in EXECUTORS:  # interleaved, so a slow spell of the machine hits both
                wall, r = run(args.root, Path(tmp), name, i, args.rounds)
                walls[name].append(wall)
                rows[name].append(r)
                print(f"repeat {i}: {name} {wall:.1f} s, median total {r['total_ms'].median():.2f} ms", flush=True)
    local, ray = (statistics.median(walls[n]) for n in EXECUTORS)
    print(f"median wall: local {local:.1f} s, ray (2 CPU workers) {ray:.1f} s, ray / local {ray / local:.3f}")
    both, ray_cells = cell_medians(rows["local"]), cell_medians(rows["ray"])
    print(f"cell medians, ray / local (all repeats pooled): {median_ratio(ray_cells, both)}; rank agreement of "
          f"total_ms {rank_agreement(ray_cells, both)}")
    half = len(rows["local"]) // 2
    if half:
        later, earlier = cell_medians(rows["local"][half:]), cell_medians(rows["local"][:half])
        print(f"noise floor, local / local (later repeats over earlier): {median_ratio(later, earlier)}; rank "
              f"agreement {rank_agreement(later, earlier)}")
    by_worker = {w: median_ratio(cell_medians([r[r["worker"] == w] for r in rows["ray"]]), both) for w in (0, 1)}
    print(f"per Ray worker, ray / local: {by_worker}")


if __name__ == "__main__":
    main()
