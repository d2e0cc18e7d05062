"""The block_importance stage's run: the model, its askable samples, the measurement and the provenance that
goes into ``importance.json`` (:mod:`knobctl.base.importance` measures)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knobctl.base.importance import ImportanceParams, importance_samples, measure_importance, metrics, summary_line
from knobctl.contracts import VQA_REQUESTS, read_table
from knobctl.execution import use_threads
from knobctl.io import checkpoint_hash, provenance
from knobctl.knobs import KnobGrid
from knobctl.model.runtime import device_name, load_runtime


@dataclass(frozen=True)
class ImportanceRun:
    """What the stage writes: ``importance.json`` (with its provenance), the metrics, and its last line."""

    result: dict[str, Any]
    metrics: dict[str, Any]
    line: str


def run_importance(own: Mapping[str, Any], grid: KnobGrid, tier_tokens: Mapping[str, int] | None, seed: int,
                   data: str | Path) -> ImportanceRun:
    """Measure what dropping each block costs, from the ``block_importance`` section ``own`` (overrides applied);
    a sample the model cannot take is counted in the metrics, not run."""
    p = ImportanceParams.from_params(own)
    threads = use_threads(p.num_threads)
    rt = load_runtime(p.source, device=p.device, tier_tokens=tier_tokens)
    rt.validate_grid(grid)
    df = read_table(Path(data) / f"{p.split}.parquet", VQA_REQUESTS)
    start = time.perf_counter()
    picked = importance_samples(rt, df, p, seed)
    result = measure_importance(rt, picked.asked, grid, p, seed, picked.images)
    wall = time.perf_counter() - start
    # No timestamp or commit: the same params give the same file, so a stage reading the order
    # does not rerun for nothing.
    result["provenance"] = provenance(own, volatile=False, device=device_name(rt.device), model=p.source,
                                      model_hash=checkpoint_hash(p.source), seed=seed, num_threads=threads)
    return ImportanceRun(result, metrics(result, len(picked.errors)), summary_line(result, wall))
