"""Controller training against the cache: the training loop, its budgets and its online fills.

Each step draws ``batch_size`` training samples, one latency budget per sample (a group),
``group_size`` configurations per group from the policy (with ``fit_mask``, only among those
whose estimated latency for the sample's question length fits: :mod:`knobctl.controller.policy`),
looks their accuracy and latency up in ``[S, C]`` tensors, computes rewards (:mod:`knobctl.controller.reward`)
and one loss (:mod:`knobctl.controller.losses`), and takes an AdamW step. Latency is the LightGBM estimator's total for
the sample's own question length and cached answer length (or a measured value once an online refresh
has replaced the cell), and with ``latency_sampling: spread`` (the default) each sampled configuration's
latency is that value times a ratio drawn from the configuration's profiled spread
(:mod:`knobctl.controller.spread`): a real request is rarely at its median, and only with the draw do
the reward's violation and efficiency terms act on configurations the fit mask allows.

The table's samples are split (seeded) into training and evaluation samples; the metrics
(:mod:`knobctl.controller.evaluation`) score the argmax policy on the evaluation samples, beside the
supervised probe (:mod:`knobctl.controller.probe`) fitted on the same training samples. The probe is
fitted before the loop (it draws no random numbers, so a run that does not use it is unchanged).

The default loss is the seed's group-relative pairwise ranking loss (``loss: pairwise``); ``grpo`` is the
alternative. Two departures from either (:mod:`knobctl.controller.losses` names the others), each off at 0
and measured against the plain losses in docs/LOG.md ("Which loss", "Training that finds small
differences"); the default takes the first at 0.75, the one that beat the plain pairwise loss in every seed
(0.5, 0.75 and 1 measured alike, and 0.75 keeps the measured outcome, and with it the online refresh, in
the reward):

* ``probe_reward`` (a learned reward model, as RLHF trains the policy against one rather than against
  raw outcomes): the accuracy the reward sees is ``(1 - probe_reward) * cached score +
  probe_reward * probe's P(right)`` for the sample and configuration. A cached score is one 0/1
  outcome per sample; configurations 1-2 points apart are told apart only over hundreds of samples,
  and a group of 16 draws sees mostly noise. The probe's prediction, fitted on the training samples
  only, pools the outcomes of samples with similar features. Online fills and refreshes change the
  cached score only; the probe is not refitted.
* ``warm_start_steps`` (supervised imitation before RL, as a policy is fine-tuned before GRPO):
  that many steps of cross-entropy on the probe's pick (the allowed configuration with the highest
  predicted P(right), for training samples and budgets drawn as training draws them) before the
  loss's steps, with the same optimizer and its state carried over.

A group is one sample under one budget, so the group (the pairs the ranking loss compares, or GRPO's group
mean) is already a baseline per budget (and per sample); ``group_size`` sets how many configurations a group
compares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from knobctl.controller.evaluation import drift, evaluate
from knobctl.controller.losses import (
    LOSSES,
    draw_actions,
    imitation_loss,
    zero_variance,
)
from knobctl.controller.policy import Controller, ControllerConfig
from knobctl.controller.probe import Probe, probe_choices
from knobctl.controller.reward import LATENCY_PRICING, RewardWeights
from knobctl.controller.tables import CacheTables, budgets_between
from knobctl.controller.train_params import RefreshParams, TrainParams
from knobctl.execution import progress_bar
from knobctl.io import round4 as _r


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
    n_eval = max(1, round(n * eval_fraction))
    return perm[n_eval:].sort().values, perm[:n_eval].sort().values


Fetch = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]



@dataclass
class TrainResult:
    controller: Controller
    curves: pd.DataFrame  # one row per logged step
    evaluation: list[dict[str, Any]]  # one row per evaluation budget
    refresh_log: pd.DataFrame  # one row per cell fetched or refreshed online
    summary: dict[str, Any]
    probe: Probe  # the supervised baseline, fitted on the same training samples


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
    # fused: one kernel for all parameters instead of a loop over them (faster per step; docs/LOG.md, "Faster step")
    opt = torch.optim.AdamW(ctrl.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
    refresh = p.online_refresh
    online = _Online(tables, fetch_factory)
    # Fitted first: it draws no random numbers, so the policy's initialisation and draws are those of a run without it.
    probe = Probe.fit(tables, train_idx, p.probe_l2)
    predicted = probe.predict(tables.language, tables.vision)  # [S, C] P(right), fitted on train_idx only
    warm_loss = _warm_start(ctrl, opt, tables, train_idx, predicted, p, gen, progress) if p.warm_start_steps else None
    curves: list[dict[str, Any]] = []
    zero_groups = torch.zeros((), dtype=torch.long)
    step_tables = _StepTables(tables, ctrl, predicted, p)
    group_loss = LOSSES[p.loss]
    price = LATENCY_PRICING[p.latency_sampling]
    entropy = "policy" if group_loss.entropy_bonus and p.entropy_coef > 0 else "none"
    pair_shape = (len(ctrl.config.top_k), len(ctrl.config.num_blocks))
    start = time.perf_counter()
    for step in progress_bar(range(1, p.steps + 1), desc="train_controller", unit="step", disable=not progress):
        idx = train_idx.index_select(0, torch.randint(len(train_idx), (p.batch_size,), generator=gen))  # [B]
        budget, feasible = step_tables.budgets(idx, gen)  # [B], [B, T, P] or None
        log_now = step % p.log_every == 0 or step == p.steps
        tier_logits, pair_logits = ctrl.stage_logits(*step_tables.inputs(idx), budget, feasible)  # [B, T], [B, T, P]
        acts = draw_actions(F.log_softmax(tier_logits, dim=-1), F.log_softmax(pair_logits, dim=-1), p.group_size, gen,
                            "all" if log_now else entropy, pair_shape, feasible)
        cells = idx[:, None] * step_tables.n_configs + acts.config  # [B, G] flat (sample, configuration) index
        if not step_tables.complete or (refresh is not None and step % refresh.every == 0):
            _fill_online(online, step_tables, idx, acts.config, cells, step, refresh, gen)
        acc, lat, complexity, spread = step_tables.cells(cells, acts.config)  # [B, G] each, spread [B, G, 2]
        r, lat = price(weights, acc, lat, budget[:, None], complexity, spread, gen)  # [B, G] each
        loss = group_loss.fn(r, acts, p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            flat = zero_variance(r)  # [B]
            zero_groups += flat.sum()
            if log_now:
                curves.append({
                    "step": step, "reward": _r(r.mean()), "loss": _r(loss), "accuracy": _r(acc.mean()),
                    "violation_rate": _r((lat > budget[:, None]).float().mean()),
                    "latency_over_budget": _r((lat / budget[:, None]).mean()),
                    "zero_variance_share": _r(flat.float().mean()),
                    **{f"entropy_{k}": _r(v.mean()) for k, v in acts.entropy.items()},
                })
    seconds = time.perf_counter() - start
    ctrl.eval()
    evaluation = evaluate(ctrl, tables, train_idx, eval_idx, budgets_between(tables.latency_ms[train_idx], p.eval_budgets),
                          predicted)
    log = online.log()
    summary = {
        "steps": p.steps, "loss_kind": p.loss, "train_samples": len(train_idx), "eval_samples": len(eval_idx),
        "train_seconds": round(seconds, 2), "rollouts": p.steps * p.batch_size * p.group_size,
        "rollouts_per_s": round(p.steps * p.batch_size * p.group_size / seconds),
        "zero_variance_share": _r(zero_groups / (p.steps * p.batch_size)),
        "warm_start_steps": p.warm_start_steps, "warm_start_final_loss": warm_loss,
        "final": curves[-1],
        "online": {"cells_fetched": int((log["reason"] == "missing").sum()) if len(log) else 0,
                   "cells_refreshed": int((log["reason"] == "refresh").sum()) if len(log) else 0,
                   **drift(log)},
    }
    return TrainResult(ctrl, pd.DataFrame(curves), evaluation, log, summary, probe)


class _StepTables:
    """What a training step reads, gathered once into a few tensors (and again after an online fill
    writes into the tables): per sample, its budget range and fit floor [S, 3], its fit latency [S, C]
    and both stages' inputs (:meth:`Controller.stage_inputs`); per (sample, configuration) cell, the
    accuracy the reward sees (the probe's share mixed in) and the latency [2, S * C]; per configuration,
    its complexity and spread [C, 3]. A step then takes one index per table instead of a chain of
    lookups and recomputes nothing that stays the same between steps. Every value is the one the
    per-step expressions give (:func:`sample_budgets`, :meth:`Controller.feasible`, the probe mix):
    the same elementwise operations on the same operands, so a run's draws and weights are unchanged
    to the bit."""

    def __init__(self, tables: CacheTables, ctrl: Controller, predicted: torch.Tensor, p: TrainParams):
        self.tables, self.predicted, self.p = tables, predicted, p
        self.n_configs = tables.scores.shape[1]
        self.shape = (len(tables.tiers), len(ctrl.config.pairs))  # (T, P)
        with torch.no_grad():
            self.stage_in = ctrl.stage_inputs(tables.language, tables.vision)  # [S, D + code], [S, T, ...]
        c = ctrl.config
        row = (tables.text_tokens - c.fit_text_tokens[0]).clamp(0, c.fit_rows - 1)  # [S]
        # With the fit mask, a configuration is allowed where its fit latency is at most the budget, or, where
        # none is, at most the cheapest one's: fit latency <= max(budget, that floor).
        self.fit_ms = ctrl.fit_latency_ms[row]  # [S, C]
        self.fit_floor = self.fit_ms.min(1).values  # [S]
        self.rebuild()

    def rebuild(self) -> None:
        """Re-read the tables' scores and latencies (after an online fill)."""
        t, share = self.tables, self.p.probe_reward
        self.complete = not bool(t.scores.isnan().any())
        acc = (1 - share) * t.scores + share * self.predicted if share else t.scores  # [S, C]
        self.cell = torch.stack([acc, t.latency_ms]).reshape(2, -1)  # [2, S * C]
        self.config = torch.cat([t.complexity[:, None], t.latency_spread], 1)  # [C, 3]: complexity, spread
        fastest = t.latency_ms.min(1).values  # [S]
        self.sample = torch.stack([fastest, t.latency_ms.max(1).values - fastest, self.fit_floor], 1)  # [S, 3]

    def budgets(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One budget in ms per sampled row [B] (:func:`sample_budgets`) and, with the fit mask, the allowed
        configurations [B, T, P] (:meth:`Controller.feasible`)."""
        u = torch.rand(len(idx), generator=gen)  # [B]
        lo, hi = self.p.budget_range
        sample = self.sample.index_select(0, idx)  # [B, 3]
        if self.p.budget_mode == "absolute":
            budget = lo + u * (hi - lo)  # [B]
        else:
            budget = sample[:, 0] + (lo + u * (hi - lo)) * sample[:, 1]  # [B]
        if not self.p.fit_mask:
            return budget, None
        # fmax: a NaN budget allows the cheapest alone, as in Controller.feasible
        ok = self.fit_ms.index_select(0, idx) <= torch.fmax(budget, sample[:, 2])[:, None]  # [B, C]
        return budget, ok.reshape(len(idx), *self.shape)

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages' inputs for the sampled rows, fresh copies for :meth:`Controller.stage_logits`."""
        return self.stage_in[0].index_select(0, idx), self.stage_in[1].index_select(0, idx)  # [B, ...], [B, T, ...]

    def cells(self, cells: torch.Tensor, config: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Accuracy, latency and complexity [B, G] and spread [B, G, 2] of flat cell indices [B, G] and
        their configurations [B, G]."""
        acc, lat = self.cell.index_select(1, cells.reshape(-1)).view(2, *cells.shape)  # [B, G] each
        per_config = self.config.index_select(0, config.reshape(-1)).view(*config.shape, 3)  # [B, G, 3]
        return acc, lat, per_config[..., 0], per_config[..., 1:]


def _fill_online(online: _Online, step_tables: _StepTables, idx: torch.Tensor, config: torch.Tensor,
                 cells: torch.Tensor, step: int, refresh: RefreshParams | None, gen: torch.Generator) -> None:
    """A step's online work: the sampled cells the table lacks, and on a refresh step a share of all its cells,
    fetched and written into the tables (their step tables rebuilt)."""
    rows = idx[:, None].expand_as(config)  # [B, G]
    missing = torch.isnan(step_tables.tables.scores.view(-1)[cells])  # [B, G]
    filled = bool(missing.any())
    if filled:
        online.fill(rows[missing], config[missing], step, "missing")
    if refresh is not None and step % refresh.every == 0:
        n = max(1, round(refresh.fraction * rows.numel()))
        pick = torch.randperm(rows.numel(), generator=gen)[:n]
        online.fill(rows.reshape(-1)[pick], config.reshape(-1)[pick], step, "refresh")
        filled = True
    if filled:
        step_tables.rebuild()


def _warm_start(ctrl: Controller, opt: torch.optim.Optimizer, tables: CacheTables, train_idx: torch.Tensor,
                predicted: torch.Tensor, p: TrainParams, gen: torch.Generator, progress: bool) -> float:
    """``warm_start_steps`` of imitation before GRPO: per training sample and budget (drawn as training
    draws them), the target is the probe's pick, the allowed configuration with the highest predicted
    P(right) (the fit mask's configurations with ``fit_mask``, else those whose estimate fits; the
    cheapest where none does), larger configurations winning ties. Returns the last step's loss."""
    loss = torch.zeros(())
    for _ in progress_bar(range(p.warm_start_steps), desc="warm start", unit="step", disable=not progress):
        idx = train_idx[torch.randint(len(train_idx), (p.batch_size,), generator=gen)]  # [B]
        budget = sample_budgets(tables, idx, p, gen)  # [B]
        feasible = ctrl.feasible(tables.text_tokens[idx], budget) if p.fit_mask else None  # [B, T, P]
        if feasible is None:
            target = probe_choices(predicted[idx], tables.latency_ms[idx], budget[:, None], tables.complexity)  # [B]
        else:
            allowed = feasible.reshape(len(idx), -1)  # [B, C]
            target = torch.where(allowed, predicted[idx] + 1e-6 * tables.complexity, torch.tensor(-1.0)).argmax(1)
        loss = imitation_loss(ctrl, tables.language[idx], tables.vision[idx], budget, target, feasible)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _r(loss.detach())


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
