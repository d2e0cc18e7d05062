"""The train_base stage as two calls: :func:`build_base` trains the embedded default model (resuming from its
checkpoint folder) or adopts the checkpoint folder ``model.source`` names, and scores it at the grid's corners on
val; :func:`write_base` writes the model, its metrics, the run's figures and the corners' CSV.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knobctl.base.evaluation import corner_frame, corner_headline, evaluate
from knobctl.base.training import TrainBaseParams, train_base
from knobctl.contracts import VQA_SPLIT, read_table
from knobctl.execution import use_threads
from knobctl.io import output_set, write_csv, write_json
from knobctl.knobs import KnobGrid
from knobctl.model.checkpoint import write_source
from knobctl.model.presets import ModelParams
from knobctl.model.runtime import Runtime, load_runtime, save_runtime
from knobctl.params import ParamsError


@dataclass(frozen=True)
class BaseModel:
    """The trained (or adopted) model, how its run went, and its accuracy at the grid's corners on val."""

    rt: Runtime
    grid: KnobGrid
    source: str | None  # the adopted checkpoint folder; None for the tiny model trained here
    steps: int
    summary: Mapping[str, Any]  # :func:`knobctl.base.training.train_base`'s, or the adoption's
    corners: Mapping[str, Any]  # :func:`knobctl.base.evaluation.evaluate` at the corners
    seconds: float

    def headline(self) -> dict[str, Any]:
        """metrics/base.json's figures: the corners' accuracy (full, smallest, range), the final loss, the steps."""
        return {**corner_headline(self.corners, self.grid.full, self.grid.smallest),
                "final_loss": self.summary["final_loss"], "steps": self.summary.get("steps")}

    def detail(self) -> dict[str, Any]:
        """How the run went (resumed from where, samples, the vision warm-start, seconds), beside the plots."""
        return {**{k: v for k, v in self.summary.items() if k not in ("final_loss", "train_seconds_this_run")},
                "stage_seconds": round(self.seconds, 1)}

    def line(self) -> str:
        h = self.headline()
        done = f"adopted {self.source}" if self.source is not None else f"{self.steps} steps"
        return (f"train_base: {done} in {round(self.seconds, 1)} s; val accuracy full {self.grid.full.label} "
                f"{h['full_accuracy']:.3f}, smallest {self.grid.smallest.label} {h['smallest_accuracy']:.3f}")


def check_model(model: ModelParams) -> None:
    """train_base trains the tiny preset or adopts a checkpoint folder; anything else is refused, naming the key."""
    if model.source is None and model.preset != "tiny":
        raise ParamsError(f"model.preset={model.preset!r}: train_base trains only the tiny preset; set model.source "
                          "to use a checkpoint folder")
    if model.source is not None and not Path(model.source).is_dir():
        raise ParamsError(f"model.source={model.source!r} is not a folder; download the checkpoint there (README.md, "
                          "'Your own model') or set model.source: null to train the tiny preset")


def build_base(own: Mapping[str, Any], grid: KnobGrid, model_section: Mapping[str, Any], seed: int, *,
               data: str | Path, out: str | Path, checkpoint: str | Path) -> BaseModel:
    """Train the tiny preset (``own``: the ``train_base`` section; resumable from ``checkpoint``) or record the
    ``model.source`` folder in ``out``, then score the model at the grid's corners on val."""
    model = ModelParams.from_params(model_section)
    p = TrainBaseParams.from_params(own)
    check_model(model)
    use_threads(p.num_threads)
    t0 = time.perf_counter()
    val = read_table(Path(data) / "val.parquet", VQA_SPLIT)
    if p.eval_max_samples and len(val) > p.eval_max_samples:
        val = val.sample(p.eval_max_samples, random_state=seed)
    if model.source is not None:
        adopted = write_source(Path(out), Path(model.source))
        rt = load_runtime(out, tier_tokens=model.tier_tokens)
        rt.validate_grid(grid)
        summary: Mapping[str, Any] = {"final_loss": None, "adopted": adopted}
    else:
        train = read_table(Path(data) / "train.parquet", VQA_SPLIT)
        rt, summary = train_base(train, grid, model, p, seed, checkpoint_dir=Path(checkpoint))
    corners = evaluate(rt, val, grid.corners(), batch_size=p.eval_batch_size, desc="val corners")
    return BaseModel(rt, grid, model.source, p.steps, summary, corners, time.perf_counter() - t0)


def write_base(b: BaseModel, *, out: str | Path, metrics: str | Path, summary: str | Path, plots: str | Path,
               checkpoint: str | Path) -> None:
    """The trained model (an adopted folder was recorded by :func:`build_base`), then its metrics, the run's
    figures and the corners' CSV as one set; the resume folder goes once they are written."""
    if b.source is None:
        save_runtime(b.rt, out)
    with output_set() as outs:
        write_json(outs.file(metrics), {"headline": b.headline()})
        write_json(outs.file(summary), b.detail())
        write_csv(outs.file(plots), corner_frame(b.corners))
    shutil.rmtree(checkpoint, ignore_errors=True)
