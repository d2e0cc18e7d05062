"""Wall time of the light entry points: every stage's --help and `python -m knobctl show`.

Usage: python benchmarks/entry_points.py CHECKOUT [CHECKOUT ...] [--runs 5] [--table data/profile]

Each checkout is timed with its own src on PYTHONPATH; runs alternate between checkouts so a
machine that slows down mid-run slows every checkout alike. Prints the median of the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def commands(checkout: Path, table: str) -> dict[str, list[str]]:
    out = {f"{p.stem} --help": [sys.executable, str(p), "--help"] for p in sorted((checkout / "stages").glob("*.py"))}
    out["knobctl show"] = [sys.executable, "-m", "knobctl", "show", str(checkout / table)]
    return out


def time_once(cmd: list[str], checkout: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkouts", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--table", default="data/profile/latency.parquet", help="Parquet table `show` summarises, relative to each checkout")
    args = ap.parse_args()
    cmds = {c: commands(c.resolve(), args.table) for c in args.checkouts}
    names = sorted(set.intersection(*(set(v) for v in cmds.values())))
    times: dict[tuple[Path, str], list[float]] = {}
    for _ in range(args.runs):
        for name in names:
            for c in args.checkouts:
                times.setdefault((c, name), []).append(time_once(cmds[c][name], c.resolve()))
    print("| entry point | " + " | ".join(str(c) for c in args.checkouts) + " |")
    print("|---" * (len(args.checkouts) + 1) + "|")
    for name in names:
        cells = [f"{statistics.median(times[(c, name)]):.2f} s" for c in args.checkouts]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
