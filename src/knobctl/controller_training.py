"""Controller training against the cache: lookup tables, budgets, the training loop and its evaluation.

Each step draws ``batch_size`` training samples, one latency budget per sample (a group),
``group_size`` configurations per group from the policy (with ``fit_mask``, only among those
whose estimated latency for the sample's question length fits: :mod:`knobctl.controller`),
looks their accuracy and latency up in ``[S, C]`` tensors, computes rewards and one loss
(:mod:`knobctl.grpo`), and takes an AdamW step. Latency is the LightGBM estimator's total for
the sample's own question length and cached answer length, until an online refresh replaces a
cell with a measured value.

The table's samples are split (seeded) into training and evaluation samples; the metrics
(:mod:`knobctl.controller_eval`) score the argmax policy on the evaluation samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from knobctl.accuracy_table import AccuracyTable
from knobctl.controller import ACTIVATIONS, Controller, ControllerConfig
from knobctl.controller_eval import _r, drift, evaluate, evaluation_budgets
from knobctl.estimator import LatencyEstimator
from knobctl.grpo import (
    ADVANTAGE_SCALES, LOSSES, PAIR_WEIGHTS, RewardWeights, grpo_loss, pairwise_loss, reward, sample_actions,
    zero_variance,
)
from knobctl.knobs import TIER_ORDER, KnobConfig
from knobctl.params import dataclass_from_section, require_int

@dataclass(frozen=True)
class TrainParams:
    """The ``train_controller`` section of params.yaml."""

    steps: int = 3000
    batch_size: int = 128
    group_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    loss: str = "grpo"
    pair_weight: str = "sign"
    entropy_coef: float = 0.05
    advantage_scale: str = "std"
    hidden: int = 64
    activation: str = "relu"
    dropout: float = 0.0
    fit_mask: bool = True
    budget_mode: str = "relative"
    budget_range: tuple[float, float] = (0.0, 1.0)
    eval_budgets: int = 8
    eval_fraction: float = 0.2
    log_every: int = 25
    online_refresh: Mapping[str, Any] | None = None

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> TrainParams:
        p = dataclass_from_section(cls, section, "train_controller", tuples=("budget_range",))
        for name in ("steps", "batch_size", "hidden", "eval_budgets", "log_every"):
            require_int(getattr(p, name), f"train_controller.{name}")
        require_int(p.group_size, "train_controller.group_size", 2)
        if p.pair_weight not in PAIR_WEIGHTS:
            raise ValueError(f"train_controller.pair_weight={p.pair_weight!r}; allowed: {', '.join(PAIR_WEIGHTS)}")
        if p.advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(f"train_controller.advantage_scale={p.advantage_scale!r}; allowed: "
                             f"{', '.join(ADVANTAGE_SCALES)}")
        if p.activation not in ACTIVATIONS:
            raise ValueError(f"train_controller.activation={p.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        if p.loss not in LOSSES:
            raise ValueError(f"train_controller.loss={p.loss!r}; allowed: {', '.join(LOSSES)}")
        if not isinstance(p.fit_mask, bool):
            raise ValueError(f"train_controller.fit_mask={p.fit_mask!r}; give true (choose among configurations whose "
                             "estimated latency fits) or false (the networks alone learn the budget boundary)")
        if p.budget_mode not in ("relative", "absolute"):
            raise ValueError(f"train_controller.budget_mode={p.budget_mode!r}; allowed: relative (fractions of each "
                             "sample's estimated latency range), absolute (ms)")
        if len(p.budget_range) != 2 or not p.budget_range[0] < p.budget_range[1]:
            raise ValueError(f"train_controller.budget_range={list(p.budget_range)}; give [low, high] with low < high")
        if not 0 < p.lr < 1 or not 0 < p.eval_fraction < 1 or p.entropy_coef < 0 or p.weight_decay < 0:
            raise ValueError("train_controller: lr and eval_fraction must lie in (0, 1); entropy_coef and "
                             "weight_decay must be >= 0")
        if p.online_refresh is not None:
            RefreshParams.from_params(p.online_refresh)
        return p


@dataclass(frozen=True)
class RefreshParams:
    """``train_controller.online_refresh``: every ``every`` steps, ``fraction`` of that step's
    sampled (sample, configuration) cells are run on the real model and written back."""

    every: int = 100
    fraction: float = 0.05

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> RefreshParams:
        p = dataclass_from_section(cls, section, "train_controller.online_refresh")
        require_int(p.every, "train_controller.online_refresh.every")
        if not 0 < p.fraction <= 1:
            raise ValueError(f"train_controller.online_refresh.fraction={p.fraction!r}; it must be in (0, 1]")
        return p


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
    complexity: torch.Tensor  # [C] 0..1 (grpo docstring)
    refreshed: torch.Tensor = field(default=None)  # [S, C] how often a cell was refreshed online
    text_tokens: torch.Tensor = field(default=None)  # [S] question length in tokens
    # [L, C] estimated latency per question length (fit_text_low + row) at the table's answer length:
    # what a fit-mask controller knows at request time (knobctl.controller docstring)
    fit_latency_ms: torch.Tensor = field(default=None)
    fit_text_low: int = 0

    def __post_init__(self) -> None:
        # contiguous: training reads cells through flat views and online fills write through them
        self.scores, self.latency_ms = self.scores.contiguous(), self.latency_ms.contiguous()
        if self.refreshed is None:
            self.refreshed = torch.zeros(self.scores.shape, dtype=torch.int32)
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


def build_tables(table: AccuracyTable, est: LatencyEstimator, configs: list[KnobConfig]) -> CacheTables:
    """Accuracy table + estimator -> lookup tensors over ``configs`` (the knobs grid), with one
    vectorised estimator call. A configuration the table lacks is a NaN column, fetched online
    when the policy samples it."""
    s, c = len(table.sample_ids), len(configs)
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
        complexity=complexity_of(table.configs), text_tokens=torch.from_numpy(text.astype(np.int64)),
        fit_latency_ms=torch.from_numpy(fit.astype(np.float32)), fit_text_low=int(lengths[0]),
    )


def sample_budgets(tables: CacheTables, idx: torch.Tensor, p: TrainParams, generator: torch.Generator) -> torch.Tensor:
    """One budget in ms per sampled row ([B])."""
    u = torch.rand(len(idx), generator=generator)  # [B]
    lo, hi = p.budget_range
    if p.budget_mode == "absolute":
        return lo + u * (hi - lo)
    lat = tables.latency_ms[idx]  # [B, C]
    fastest, slowest = lat.min(1).values, lat.max(1).values  # [B]
    return fastest + (lo + u * (hi - lo)) * (slowest - fastest)


def split_samples(n: int, eval_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    n_eval = max(1, int(round(n * eval_fraction)))
    return perm[n_eval:].sort().values, perm[:n_eval].sort().values


Fetch = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]



@dataclass
class TrainResult:
    controller: Controller
    curves: pd.DataFrame  # one row per logged step
    evaluation: list[dict[str, Any]]  # one row per evaluation budget
    refresh_log: pd.DataFrame  # one row per cell fetched or refreshed online
    summary: dict[str, Any]


def make_controller(tables: CacheTables, train_idx: torch.Tensor, hidden: int, dropout: float = 0.0,
                    budget_range: tuple[float, float] = (0.0, 1.0), budget_mode: str = "relative",
                    fit_mask: bool = False, activation: str = "relu") -> Controller:
    """A fresh controller sized for the tables, its normalisers and budget scale from the training
    samples; the budget code is clamped to the range training draws budgets from. With
    ``fit_mask`` it carries the tables' fit latency per question length."""
    full, cheapest = int(tables.complexity.argmax()), int(tables.complexity.argmin())
    low = float(tables.latency_ms[train_idx, cheapest].median())
    high = float(tables.latency_ms[train_idx, full].median())
    # Relative budgets are fractions of each sample's own [fastest, slowest], close to x itself.
    x_range = budget_range if budget_mode == "relative" else tuple((b - low) / (high - low) for b in budget_range)
    config = ControllerConfig(
        language_dim=tables.language.shape[1], vision_dim=tables.vision.shape[2], tiers=tables.tiers,
        top_k=tuple(sorted({k.top_k for k in tables.configs})),
        num_blocks=tuple(sorted({k.num_blocks for k in tables.configs})),
        budget_low_ms=round(low, 3), budget_high_ms=round(high, 3), hidden=hidden, dropout=dropout,
        budget_x_range=(round(x_range[0], 4), round(x_range[1], 4)), fit_mask=fit_mask,
        fit_text_tokens=((tables.fit_text_low, tables.fit_text_low + len(tables.fit_latency_ms) - 1) if fit_mask
                         else (0, 0)), activation=activation,
    )
    if tuple(config.configs) != tables.configs:
        raise ValueError("the tables' configurations are not the full tiers x top_k x num_blocks grid in grid order")
    ctrl = Controller(config)
    ctrl.set_normalisers(tables.language[train_idx], tables.vision[train_idx])
    if fit_mask:
        ctrl.fit_latency_ms.copy_(tables.fit_latency_ms)
    return ctrl


def train_controller(tables: CacheTables, p: TrainParams, weights: RewardWeights, seed: int,
                     fetch_factory: Callable[[], Fetch] | None = None, progress: bool = True) -> TrainResult:
    """The training loop (module docstring); deterministic given ``seed``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, eval_idx = split_samples(len(tables.sample_ids), p.eval_fraction, seed)
    ctrl = make_controller(tables, train_idx, p.hidden, p.dropout, p.budget_range, p.budget_mode, p.fit_mask,
                           p.activation)
    # fused: one kernel for all parameters instead of a loop over them; 1.2x a whole step on the 2-core CPU
    opt = torch.optim.AdamW(ctrl.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
    refresh = RefreshParams.from_params(p.online_refresh) if p.online_refresh else None
    online = _Online(tables, fetch_factory)
    curves: list[dict[str, Any]] = []
    zero_groups = torch.zeros((), dtype=torch.long)
    n_configs = tables.scores.shape[1]
    start = time.perf_counter()
    for step in tqdm(range(1, p.steps + 1), desc="train_controller", unit="step", disable=not progress):
        idx = train_idx[torch.randint(len(train_idx), (p.batch_size,), generator=gen)]  # [B]
        budget = sample_budgets(tables, idx, p, gen)  # [B]
        log_now = step % p.log_every == 0 or step == p.steps
        feasible = ctrl.feasible(tables.text_tokens[idx], budget) if p.fit_mask else None  # [B, T, P]
        acts = sample_actions(ctrl, tables.language[idx], tables.vision[idx], budget, p.group_size, gen,
                              with_entropy=log_now or (p.loss == "grpo" and p.entropy_coef > 0), feasible=feasible)
        rows = idx[:, None].expand_as(acts.config)  # [B, G]
        cells = idx[:, None] * n_configs + acts.config  # [B, G] flat: one 1-D lookup per table, not a 2-D one
        acc = tables.scores.view(-1)[cells]  # [B, G]
        missing = torch.isnan(acc)  # [B, G]
        filled = bool(missing.any())
        if filled:
            online.fill(rows[missing], acts.config[missing], step, "missing")
        if refresh is not None and step % refresh.every == 0:
            n = max(1, int(round(refresh.fraction * rows.numel())))
            pick = torch.randperm(rows.numel(), generator=gen)[:n]
            online.fill(rows.reshape(-1)[pick], acts.config.reshape(-1)[pick], step, "refresh")
            filled = True
        if filled:  # the fills wrote into the tables
            acc = tables.scores.view(-1)[cells]  # [B, G]
        lat = tables.latency_ms.view(-1)[cells]  # [B, G]
        r = reward(weights, acc, lat, budget[:, None], tables.complexity[acts.config])  # [B, G]
        if p.loss == "pairwise":
            loss, _ = pairwise_loss(r, acts.logp, p.pair_weight)
        else:
            entropy = acts.entropy["tier"][:, None] + acts.entropy["pair"] if acts.entropy else torch.zeros(())
            loss = grpo_loss(r, acts.logp, entropy, p.entropy_coef, scale=p.advantage_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        zero_groups += zero_variance(r).sum()
        if log_now:
            curves.append({
                "step": step, "reward": _r(r.mean()), "loss": _r(loss.detach()), "accuracy": _r(acc.mean()),
                "violation_rate": _r((lat > budget[:, None]).float().mean()),
                "latency_over_budget": _r((lat / budget[:, None]).mean()),
                "zero_variance_share": _r(zero_variance(r).float().mean()),
                **{f"entropy_{k}": _r(v.detach().mean()) for k, v in acts.entropy.items()},
            })
    seconds = time.perf_counter() - start
    ctrl.eval()
    evaluation = evaluate(ctrl, tables, train_idx, eval_idx, evaluation_budgets(tables, train_idx, p.eval_budgets))
    log = online.log()
    summary = {
        "steps": p.steps, "loss_kind": p.loss, "train_samples": len(train_idx), "eval_samples": len(eval_idx),
        "train_seconds": round(seconds, 2), "rollouts": p.steps * p.batch_size * p.group_size,
        "rollouts_per_s": round(p.steps * p.batch_size * p.group_size / seconds),
        "zero_variance_share": _r(zero_groups / (p.steps * p.batch_size)),
        "final": curves[-1],
        "online": {"cells_fetched": int((log["reason"] == "missing").sum()) if len(log) else 0,
                   "cells_refreshed": int((log["reason"] == "refresh").sum()) if len(log) else 0,
                   **drift(log)},
    }
    return TrainResult(ctrl, pd.DataFrame(curves), evaluation, log, summary)


class _Online:
    """Cells fetched from the real model, written back into the tables (append-only log)."""

    def __init__(self, tables: CacheTables, factory: Callable[[], Fetch] | None):
        self.tables, self.factory, self.fetch, self.rows = tables, factory, None, []

    def fill(self, samples: torch.Tensor, configs: torch.Tensor, step: int, reason: str) -> None:
        cells = torch.unique(torch.stack([samples, configs], 1), dim=0)  # [N, 2]
        s, c = cells[:, 0], cells[:, 1]
        if self.fetch is None:
            if self.factory is None:
                raise RuntimeError(f"{len(cells)} cells are not in the accuracy table and no model is loaded to fetch "
                                   "them; rebuild the table with every configuration or allow online fetching")
            self.fetch = self.factory()
        fresh_score, fresh_ms = self.fetch(s.numpy(), c.numpy())
        t = self.tables
        self.rows.append(pd.DataFrame({
            "step": step, "reason": reason, "sample_id": t.sample_ids[s.numpy()],
            "config": [t.configs[i].label for i in c.tolist()],
            "cached_score": t.scores[s, c].numpy(), "fresh_score": fresh_score,
            "cached_latency_ms": t.latency_ms[s, c].numpy(), "fresh_latency_ms": fresh_ms,
        }))
        t.scores[s, c] = torch.as_tensor(fresh_score, dtype=torch.float32)
        t.latency_ms[s, c] = torch.as_tensor(fresh_ms, dtype=torch.float32)
        t.refreshed[s, c] += 1
        self.rows[-1]["refresh_count"] = t.refreshed[s, c].numpy()

    def log(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame(
            columns=["step", "reason", "sample_id", "config", "cached_score", "fresh_score", "cached_latency_ms",
                     "fresh_latency_ms", "refresh_count"])
