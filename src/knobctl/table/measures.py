"""The shared measures of an accuracy table: one definition of each, used by every phase above it.

A *score matrix* is ``[S, C]``: one row per sample, one column per configuration (grid order), the VQA score
of that configuration's answer. Every phase reads the table through these:

* **missing cells**: a NaN cell (an error row of the table, or a configuration the table lacks) counts as a
  wrong answer, score 0, in every measure. A request that fails returns no answer, which its user sees as a
  wrong one; and every configuration's mean is then taken over the same samples, so the means compare;
* **accuracy** of a configuration (:func:`config_accuracy`): its mean score over the samples;
* **the per-sample oracle** (:func:`oracle_choice`, :func:`oracle_scores`): each sample's most accurate
  configuration among those that fit its budget (every configuration where no latency is given), ties to the
  first in grid order; a sample where none fits scores 0. It bounds any method that picks one configuration per
  sample from the same table, and is not a method itself. It is the only thing knobctl calls the oracle;
* **the best static configuration** (:func:`best_static`): the most accurate configuration that fits the budget
  for at least :data:`FIT_SHARE` of the samples (every configuration where no latency is given), ties to the
  first in grid order; None where none fits;
* **the full and the smallest configuration** (:func:`full_index`, :func:`smallest_index`): the largest and the
  cheapest by knob order: tier (low, medium, high), then top_k, then blocks.

Numpy and pandas only, so ``knobctl show`` reads a table without loading torch; a CPU torch tensor is accepted
wherever an array is. Means are taken in float64: configurations whose scores add up to the same total tie
exactly, and the tie goes to the first in grid order whatever the summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from knobctl.knobs import TIER_ORDER, KnobConfig

#: A configuration fits a budget, as a static choice, when its latency does for at least this share of samples.
FIT_SHARE = 0.95


def filled(scores: Any) -> np.ndarray:
    """The score matrix in float64 with every missing cell as 0 (a wrong answer): [S, C]."""
    return np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)


def config_accuracy(scores: Any) -> np.ndarray:
    """Each configuration's accuracy over the samples of ``scores`` [S, C]: [C]."""
    return filled(scores).mean(axis=0)


def fits(latency_ms: Any, budget_ms: Any) -> np.ndarray:
    """Which cells of ``latency_ms`` fit ``budget_ms`` (one budget, or one per sample as [S, 1]): bool, its shape.

    The comparison is made in the latency's own precision, as torch makes it: a budget taken from the table's
    float32 latencies then fits the configuration it was taken from."""
    lat = np.asarray(latency_ms)
    if np.ndim(budget_ms) == 0:
        return lat <= float(budget_ms)  # a Python float takes the array's precision
    return lat <= np.asarray(budget_ms, dtype=lat.dtype)


def oracle_choice(scores: Any, latency_ms: Any = None, budget_ms: Any = None) -> np.ndarray:
    """The per-sample oracle's configuration (column) of each sample, -1 where none fits: [S].

    ``latency_ms`` [S, C] and ``budget_ms`` (one budget, or one per sample as [S, 1]) say which cells fit."""
    acc = filled(scores)
    ok = np.ones(acc.shape, dtype=bool) if latency_ms is None else fits(latency_ms, budget_ms)
    best = np.where(ok, acc, -1.0).argmax(axis=1)  # [S]; argmax takes the first of equal scores
    return np.where(ok.any(axis=1), best, -1)


def oracle_scores(scores: Any, latency_ms: Any = None, budget_ms: Any = None) -> np.ndarray:
    """The per-sample oracle's score of each sample (0 where no configuration fits): [S]."""
    acc = filled(scores)
    choice = oracle_choice(acc, latency_ms, budget_ms)
    return np.where(choice >= 0, acc[np.arange(len(acc)), np.maximum(choice, 0)], 0.0)


def static_fits(latency_ms: Any, budget_ms: float, share: float = FIT_SHARE) -> np.ndarray:
    """Which configurations fit ``budget_ms`` for at least ``share`` of the samples of ``latency_ms`` [S, C]: [C]."""
    return fits(latency_ms, budget_ms).mean(axis=0) >= share


def best_static(accuracy: Any, latency_ms: Any = None, budget_ms: float | None = None) -> int | None:
    """The best static configuration (column) for ``budget_ms``: the most accurate one (``accuracy`` [C]) that
    fits for :data:`FIT_SHARE` of the samples of ``latency_ms`` [S, C]; any configuration where no latency is
    given. None where none fits."""
    acc = np.asarray(accuracy, dtype=np.float64)
    ok = np.ones(len(acc), dtype=bool) if latency_ms is None else static_fits(latency_ms, budget_ms)
    if not ok.any():
        return None
    return int(np.where(ok, acc, -1.0).argmax())


def knob_rank(k: KnobConfig) -> tuple[int, int, int]:
    """A configuration's place in knob order: tier (cost order), then top_k, then blocks."""
    return TIER_ORDER.index(k.tier), k.top_k, k.num_blocks


def full_index(configs: Sequence[KnobConfig]) -> int:
    """The position of the full configuration (the largest in knob order) in ``configs``."""
    return max(range(len(configs)), key=lambda j: knob_rank(configs[j]))


def smallest_index(configs: Sequence[KnobConfig]) -> int:
    """The position of the smallest configuration (the cheapest in knob order) in ``configs``."""
    return min(range(len(configs)), key=lambda j: knob_rank(configs[j]))


def scored(rows: pd.DataFrame) -> pd.DataFrame:
    """An accuracy table's rows with every missing score (an error row's) as 0, for means grouped by a knob."""
    return rows.assign(score=filled(rows["score"].where(rows["error"].isna()) if "error" in rows else rows["score"]))


def score_matrix(rows: pd.DataFrame, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """An accuracy table's rows (one per sample and configuration) as a score matrix: samples in table order,
    one column per configuration label (``labels``, or the table's in order of appearance); an error row's cell
    and a configuration the table lacks are NaN (missing)."""
    score = rows["score"].where(rows["error"].isna()) if "error" in rows else rows["score"]
    wide = rows.assign(score=score).pivot(index="sample_id", columns="config", values="score")
    columns = list(labels) if labels is not None else list(pd.unique(rows["config"]))
    return wide.reindex(index=pd.unique(rows["sample_id"]), columns=columns)


def signed(x: float | None, digits: int = 4) -> str:
    """A difference with its sign (``+0.0123``), or ``-`` where it was not measured."""
    return "-" if x is None else f"{x:+.{digits}f}"
