"""The cache as lookup tensors: accuracy table + latency estimator -> ``[sample, configuration]`` tables.

Controller training, its evaluation and validation all read the cache through :class:`CacheTables`:
scores and estimated latency per (sample, configuration) over the whole knob grid, the controller's
features, each configuration's size (complexity), and the fit table a fit-mask controller carries
(estimated latency per question length). :func:`budgets_between` spreads evaluation budgets over the
range where a choice exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from knobctl.knobs import TIER_ORDER, KnobConfig
from knobctl.latency.estimator import LatencyEstimator
from knobctl.table.accuracy_table import AccuracyTable


@dataclass
class CacheTables:
    """The cache as tensors: rows are samples, columns configurations (grid order)."""

    sample_ids: np.ndarray  # [S]
    question_types: np.ndarray  # [S]
    configs: tuple[KnobConfig, ...]  # C
    tiers: tuple[str, ...]  # T
    scores: torch.Tensor  # [S, C] VQA score, NaN where the table has none
    latency_ms: torch.Tensor  # [S, C] estimated, or measured once refreshed
    language: torch.Tensor  # [S, D]
    vision: torch.Tensor  # [S, T, D]
    complexity: torch.Tensor  # [C] 0..1 over the grid (knobctl.controller.reward)
    refreshed: torch.Tensor = field(default=None)  # [S, C] how often a cell was refreshed online
    text_tokens: torch.Tensor = field(default=None)  # [S] question length in tokens
    # [L, C] estimated latency per question length (fit_text_low + row) at the table's answer length:
    # what a fit-mask controller knows at request time (knobctl.controller.policy docstring)
    fit_latency_ms: torch.Tensor = field(default=None)
    fit_text_low: int = 0
    # [C, 2] (p10, p90) / median of each configuration's profiled latency (knobctl.controller.spread);
    # (1, 1) when no profile is given: every request takes exactly its estimate
    latency_spread: torch.Tensor = field(default=None)

    def __post_init__(self) -> None:
        # contiguous: training reads cells through flat views and online fills write through them
        self.scores, self.latency_ms = self.scores.contiguous(), self.latency_ms.contiguous()
        if self.refreshed is None:
            self.refreshed = torch.zeros(self.scores.shape, dtype=torch.int32)
        if self.latency_spread is None:
            self.latency_spread = torch.ones(len(self.configs), 2)
        if self.text_tokens is None:
            self.text_tokens = torch.zeros(len(self.sample_ids), dtype=torch.long)
        if self.fit_latency_ms is None:  # tables built by hand: each length's median row, lengths in between filled
            lengths = torch.arange(int(self.text_tokens.min()), int(self.text_tokens.max()) + 1)
            rows = [self.latency_ms[self.text_tokens == n] for n in lengths.tolist()]
            table, last = [], None
            for r in rows:
                last = r.median(0).values if len(r) else last
                table.append(last)
            self.fit_latency_ms, self.fit_text_low = torch.stack(table), int(lengths[0])


def complexity_of(configs: tuple[KnobConfig, ...]) -> torch.Tensor:
    """Each configuration's size: mean of its knob positions scaled to 0..1 over the grid ([C])."""
    def scaled(values: list[Any]) -> np.ndarray:
        uniq = sorted(set(values), key=lambda v: TIER_ORDER.index(v) if isinstance(v, str) else v)
        pos = np.array([uniq.index(v) for v in values], dtype=np.float32)
        return pos / max(len(uniq) - 1, 1)

    parts = [scaled([getattr(k, f) for k in configs]) for f in ("tier", "top_k", "num_blocks")]
    return torch.from_numpy(np.mean(parts, axis=0).astype(np.float32))


FIT_MARGIN = 16  # question lengths priced beyond the table's shortest and longest (tokens)


def build_tables(table: AccuracyTable, est: LatencyEstimator, configs: list[KnobConfig],
                 spread: torch.Tensor | None = None) -> CacheTables:
    """Accuracy table + estimator -> lookup tensors over ``configs`` (the knobs grid), with one
    vectorised estimator call. A configuration the table lacks is a NaN column, fetched online
    when the policy samples it. ``spread`` [C, 2]: :func:`knobctl.controller.spread.latency_spread`."""
    c = len(configs)
    have = {k: j for j, k in enumerate(table.configs)}
    cols = np.array([have.get(k, -1) for k in configs])  # [C] column in the table, -1 if absent

    def take(a: np.ndarray, fill: float) -> np.ndarray:
        return np.where(cols[None, :] >= 0, a[:, np.maximum(cols, 0)], fill)  # [S, C]

    scores, inputs, outputs = take(table.scores, np.nan), take(table.input_tokens, -1), take(table.output_tokens, -1)
    prompt = np.array([est.tiers[k.tier]["prompt_tokens"] for k in configs])  # [C]
    text = np.where(inputs >= 0, inputs - prompt[None, :], -1).max(1)  # [S]: the same question in every cell
    out = np.where(outputs > 0, outputs, np.nan)  # [S, C]
    with np.errstate(all="ignore"):
        out = np.where(np.isnan(out), np.nanmedian(out, axis=1, keepdims=True), out)  # a missing cell: its row's median
    out = np.nan_to_num(out, nan=1.0).astype(int)
    tiers = np.array([k.tier for k in configs], dtype=object)

    def price(text_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Estimated total ms of every configuration: lengths [N] and answer tokens [N, C] -> [N, C]."""
        n = len(text_tokens)
        return est.predict_total(np.broadcast_to(tiers, (n, c)), np.broadcast_to([k.top_k for k in configs], (n, c)),
                                 np.broadcast_to([k.num_blocks for k in configs], (n, c)),
                                 np.broadcast_to(text_tokens[:, None], (n, c)), output_tokens).reshape(n, c)

    total = price(text, out)  # [S, C]
    # Request time knows the question's length, not the answer's: the fit table prices every
    # length (the table's, with room on both sides) at the table's typical answer length.
    lengths = np.arange(max(int(text.min()) - FIT_MARGIN, 1), int(text.max()) + FIT_MARGIN + 1)  # [L]
    fit = price(lengths, np.full((len(lengths), c), int(np.median(out))))  # [L, C]
    return CacheTables(
        sample_ids=table.sample_ids, question_types=table.question_types, configs=tuple(configs),
        tiers=tuple(dict.fromkeys(k.tier for k in configs)),
        scores=torch.from_numpy(scores.astype(np.float32)),
        latency_ms=torch.from_numpy(total.astype(np.float32)),
        language=torch.from_numpy(table.language), vision=torch.from_numpy(table.vision),
        complexity=complexity_of(tuple(configs)), text_tokens=torch.from_numpy(text.astype(np.int64)),
        fit_latency_ms=torch.from_numpy(fit.astype(np.float32)), fit_text_low=int(lengths[0]), latency_spread=spread,
    )


def budgets_between(latency_ms: torch.Tensor, count: int, scale: float = 1.0) -> tuple[float, ...]:
    """``count`` budgets from where only the cheapest configuration fits to just above the full one:
    the median over samples of each sample's fastest and (x 1.05) slowest latency in ``latency_ms``
    [S, C], times ``scale`` (the machine's speed against the estimate), rounded to 0.01 ms."""
    lat = latency_ms * scale  # [S, C]
    lo, hi = float(lat.min(1).values.median()), float(lat.max(1).values.median()) * 1.05
    return tuple(round(float(b), 2) for b in np.linspace(lo, hi, count))
