"""The bad-input probe set: every stage fed inputs it must refuse, each judged from the outside.

Builds a copy of the repository on the tests' tiny params (``dvc repro`` once, cached in ``--work``), then for
each case copies that repository, damages one input (a params value, a table, an artifact, an output path)
and runs the stage that reads it, as DVC would (``python stages/<stage>.py``). A case's outcome is:

* ``named error``: exit 2, no traceback, every output of the stage as it was before (nothing half-written);
* ``correct result``: exit 0 where the input is legal (an unknown extra column, say);
* ``named warning``: exit 0 where the input is allowed with a warning that names it (a table of part of the grid);
* ``SILENT``: exit 0 on an input that must be refused;
* ``WRONG RESULT``: exit 0 on a legal input, but its result fails the case's check (bad samples not counted);
* ``TRACEBACK``: a Python traceback or another exit status (a crash, an abort);
* ``HALF-WRITTEN``: a refusal that changed some of the stage's outputs.

    python benchmarks/bad_inputs.py                      # every case, a markdown table on stdout
    python benchmarks/bad_inputs.py --only controller    # cases whose name contains the pattern
    python benchmarks/bad_inputs.py --out /tmp/probe.md  # the table written to a file too

The first run builds the tiny repository (a few minutes); later runs reuse it from ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bad_input_cases import (
    Case,
    artifact_cases,
    output_cases,
    params_cases,
    table_cases,
    vqa_cases,
)
from benchmarks.bad_request_cases import bad_request_cases
from tests.conftest import copy_repo, run  # the same tiny repository the end-to-end test builds


def all_cases() -> list[Case]:
    return params_cases() + vqa_cases() + bad_request_cases() + table_cases() + artifact_cases() + output_cases()


# --- running and judging ---------------------------------------------------------------------------------

def stage_outputs(repo: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            name = next(iter(entry)) if isinstance(entry, dict) else entry
            paths.append(repo / name)
    return paths


def fingerprint(paths: list[Path]) -> dict[str, str]:
    out = {}
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root] if root.exists() else []
        for f in files:
            out[str(f)] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def build(work: Path) -> Path:
    base = work / "base"
    if (base / ".built").exists():
        return base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    copy_repo(base)
    print("building the tiny repository (dvc repro) ...", flush=True)
    run([sys.executable, "-m", "dvc", "repro"], base)
    (base / ".built").write_text("")
    return base


def judge(case: Case, base: Path, scratch: Path) -> tuple[str, str, float]:
    repo = scratch / "case"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(base, repo, symlinks=True, ignore=shutil.ignore_patterns(".dvc", ".git"))
    outputs = stage_outputs(repo, case.stage)
    case.mutate(repo)
    before = fingerprint(outputs)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, f"stages/{case.stage}.py"], cwd=repo, capture_output=True, text=True,
                          timeout=900, check=False)
    took = time.perf_counter() - start
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    message = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    if "Traceback" in proc.stderr or proc.returncode not in (0, 2):
        return "TRACEBACK", f"exit {proc.returncode}: {message}", took
    if proc.returncode == 0:
        if case.warns and case.warns in proc.stderr:
            return "named warning", next(ln for ln in lines if case.warns in ln), took
        if not case.legal:
            return "SILENT", "exit 0", took
        wrong = case.check(repo) if case.check is not None else None
        return ("WRONG RESULT", wrong, took) if wrong else ("correct result", "", took)
    if fingerprint(outputs) != before:
        return "HALF-WRITTEN", message, took
    return ("named error", message, took) if not case.legal else ("REFUSED", message, took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/knobctl-bad-inputs", help="where the tiny repository is built and kept")
    ap.add_argument("--only", nargs="*", default=[], help="run only cases whose stage and name contain one of these")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    work = Path(args.work)
    base = build(work)
    cases = [c for c in all_cases() if not args.only or any(o in f"{c.stage} {c.name}" for o in args.only)]
    rows, good = [], 0
    try:
        from tqdm import tqdm
        it = tqdm(cases, desc="bad inputs", unit="case")
    except ImportError:  # pragma: no cover
        it = cases
    for case in it:
        outcome, message, took = judge(case, base, work)
        good += outcome in ("named error", "named warning", "correct result")
        rows.append(f"| {case.stage} | {case.name} | {outcome} | {message[:140].replace('|', '/')} | {took:.1f} |")
        if outcome not in ("named error", "named warning", "correct result"):  # visible while the run goes on
            it.write(rows[-1]) if hasattr(it, "write") else print(rows[-1], flush=True)
    table = "\n".join(["| stage | bad input | outcome | message | s |", "|---|---|---|---|---|", *rows])
    print(table)
    summary = f"{good} of {len(cases)} cases end in a named error, a named warning or a correct result"
    print(summary)
    if args.out:
        Path(args.out).write_text(table + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
