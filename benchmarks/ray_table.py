"""The accuracy table's wall time with 1 local process against 2 Ray CPU workers, side by side (issue 19).

    python benchmarks/ray_table.py --root <a repository with dvc repro outputs> [--num-samples N] [--repeats R]

Runs ``stages/accuracy_table.py`` of ``--root`` on its params (models/base, data/vqa) into a temporary
folder, alternating ``executor: local`` (one process, every core's torch threads) and ``executor: ray``
(a local Ray started by the stage, 2 workers of 1 CPU each), ``--repeats`` times each, and prints the
median wall time of each (the whole stage: model loading, Ray's start and stop included) and their
ratio. Every run's rollouts.parquet must be the same bytes, or the script fails.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = {
    "local": ["executor=local", "num_threads=0"],
    "ray": ["executor=ray", "num_threads=0", "ray={num_workers: 2, num_cpus_per_worker: 1}"],
}


def run(root: Path, work: Path, name: str, i: int, num_samples: int | None) -> tuple[float, str]:
    out = work / f"{name}-{i}"
    sets = EXECUTORS[name] + ([f"num_samples={num_samples}"] if num_samples else [])
    cmd = [sys.executable, str(root / "stages/accuracy_table.py"), "--out", str(out / "rollouts"), "--metrics",
           str(out / "metrics.json"), "--plots", str(out / "plots"), "--cache", str(out / "cache"), "--set", *sets]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, hashlib.sha256((out / "rollouts/rollouts.parquet").read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--num-samples", type=int, default=None, help="a seeded subset of the split (default: all of it)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    hashes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in EXECUTORS:  # interleaved, so a slow spell of the machine hits both
                wall, digest = run(args.root, Path(tmp), name, i, args.num_samples)
                walls[name].append(wall)
                hashes.add(digest)
                print(f"round {i}: {name} {wall:.1f} s (rollouts.parquet {digest})", flush=True)
    if len(hashes) != 1:
        raise SystemExit(f"the executors wrote different tables: {sorted(hashes)}")
    local, ray = (statistics.median(walls[n]) for n in EXECUTORS)
    print(f"median wall: local {local:.1f} s, ray (2 CPU workers) {ray:.1f} s, ray / local {ray / local:.3f}; "
          f"every table the same bytes ({hashes.pop()})")


if __name__ == "__main__":
    main()
