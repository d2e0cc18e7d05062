"""VQA accuracy of a model at chosen knob configurations, overall and per question type (eval_base, train_base);
:func:`corners_on_test` is the eval_base stage's run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from knobctl.contracts import VQA_REQUESTS, read_table
from knobctl.execution import progress_bar, use_threads
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.presets import ModelParams
from knobctl.model.runtime import Runtime, load_runtime
from knobctl.model.screen import askable
from knobctl.params import build, require_device, require_int
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.sources import decode_images, select_samples


@dataclass(frozen=True)
class EvalParams:
    """The ``eval_base:`` section of params.yaml."""

    batch_size: int = 256
    max_samples: int | None = 3000
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        require_int(self.batch_size, "eval_base.batch_size")
        if self.max_samples is not None:
            require_int(self.max_samples, "eval_base.max_samples")
        require_int(self.num_threads, "eval_base.num_threads", 0)
        require_device(self.device, "eval_base.device")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> EvalParams:
        return build(cls, section, "eval_base")


def evaluate(
    rt: Runtime, df: pd.DataFrame, configs: Sequence[KnobConfig], batch_size: int = 256, desc: str = "eval",
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """VQA accuracy of each configuration overall and per question type. ``images``: ``df``'s images already
    decoded at the model's size (:class:`knobctl.model.screen.Askable`), else they are decoded here."""
    if images is None:
        images = decode_images(df["image"].tolist(), size=rt.image_size)
    images = torch.from_numpy(images)
    questions = df["question"].tolist()
    results: dict[str, Any] = {}
    for cfg in progress_bar(configs, desc=desc, unit="config"):
        preds = rt.answer(images, questions, cfg, batch_size=batch_size)
        scores = np.array([vqa_score(p, a) for p, a in zip(preds, df["answers"])])
        per_type = pd.Series(scores).groupby(df["question_type"].to_numpy()).mean()
        results[cfg.label] = {
            **cfg.as_dict(),
            "accuracy": round(float(scores.mean()), 4),
            "per_question_type": {k: round(float(v), 4) for k, v in per_type.items()},
            "n": len(scores),
        }
    return results


def corner_headline(results: dict[str, Any], full: KnobConfig, smallest: KnobConfig) -> dict[str, float]:
    """The headline of an evaluation at the grid's corners: the full and smallest configurations' accuracy and
    the range over the corners (every corner and question type is in :func:`corner_frame`'s CSV)."""
    accs = {label: r["accuracy"] for label, r in results.items()}
    return {"full_accuracy": accs[full.label], "smallest_accuracy": accs[smallest.label],
            "corner_min": min(accs.values()), "corner_max": max(accs.values())}


def corner_frame(results: dict[str, Any]) -> pd.DataFrame:
    """One row per (corner, question type) with its accuracy and question count, for ``dvc plots``."""
    rows = []
    for label, r in results.items():
        knobs = {k: r[k] for k in ("tier", "top_k", "num_blocks")}
        rows.append({"config": label, **knobs, "question_type": "all", "accuracy": r["accuracy"], "n": r["n"]})
        rows += [{"config": label, **knobs, "question_type": t, "accuracy": a, "n": None}
                 for t, a in r["per_question_type"].items()]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class CornerRun:
    """The eval_base stage's result: its metrics and the per-corner, per-type accuracies."""

    metrics: dict[str, Any]
    corners: pd.DataFrame  # :func:`corner_frame`

    def line(self) -> str:
        h = self.metrics["headline"]
        return (f"eval_base: test accuracy full {h['full_accuracy']:.3f}, smallest {h['smallest_accuracy']:.3f}, "
                f"corners {h['corner_min']:.3f}..{h['corner_max']:.3f}"
                + (f"; {h['error_samples']} samples the model cannot take, left out" if h["error_samples"] else ""))


def corners_on_test(source: str, data: str | Path, grid: KnobGrid, own: EvalParams, model: ModelParams, seed: int) -> CornerRun:
    """The model at ``source`` answers a seeded subset of ``data``'s test split at the grid's corners; a sample
    whose image or question the model cannot take is counted (``error_samples``), not run."""
    use_threads(own.num_threads)
    rt = load_runtime(source, device=own.device, block_order=model.block_order, tier_tokens=model.tier_tokens)
    rt.validate_grid(grid)
    test = read_table(Path(data) / "test.parquet", VQA_REQUESTS)
    test = select_samples(test, None if own.max_samples is None else min(own.max_samples, len(test)), seed, "test")
    picked = askable(rt, test, "eval_base")
    results = evaluate(rt, picked.asked, grid.corners(), batch_size=own.batch_size, desc="test corners",
                       images=picked.images)
    headline = {**corner_headline(results, grid.full, grid.smallest), "questions": len(picked.asked),
                "error_samples": len(picked.errors)}
    return CornerRun({"headline": headline}, corner_frame(results))
