"""The supervised probe: per configuration, P(answer right | the controller's features), on cached tables.

One L2-regularised logistic regression per configuration, fitted on the training samples'
language feature and the vision feature at that configuration's tier (standardised with the
training samples' mean and std), predicts whether the configuration answers a sample right
(VQA score > 0.5). A request then takes the fitting configuration with the highest
prediction. It is a ceiling for what the features carry about which configuration a request
needs (no policy, no reward), and the supervised baseline the GRPO controller is compared with.

All configurations are fitted at once as one batched problem (full-batch L-BFGS on a
``[C, D]`` weight matrix), so the probe needs torch only: no scikit-learn in the stages.
"""

from __future__ import annotations

import torch

from knobctl.controller.tables import CacheTables

# The penalty on the summed training log-loss: 1 / C in scikit-learn's terms. 100 (C = 0.01) is what
# benchmarks/controller_ceiling.py measured best; a weak penalty lets the argmax over 75 noisy
# per-configuration fits pick a worse configuration than static (the winner's curse).
L2 = 100.0


def probe_features(tables: CacheTables) -> torch.Tensor:
    """Each sample's features as seen by each configuration: language + vision at its tier ([S, C, 2D])."""
    tier_of = torch.tensor([tables.tiers.index(k.tier) for k in tables.configs])  # [C]
    vision = tables.vision[:, tier_of]  # [S, C, D]
    language = tables.language[:, None].expand(-1, len(tables.configs), -1)  # [S, C, D]
    return torch.cat([language, vision], dim=2).float()


def fit_probe(tables: CacheTables, train_idx: torch.Tensor, l2: float = L2, max_iter: int = 200) -> torch.Tensor:
    """P(right) for every sample and configuration ([S, C]), fitted on ``train_idx`` only.

    A configuration whose training labels are all equal predicts that label (nothing to fit)."""
    x = probe_features(tables)  # [S, C, F]
    xt = x[train_idx]  # [N, C, F]
    mean, std = xt.mean(0), xt.std(0).clamp(min=1e-6)  # [C, F]
    x, xt = (x - mean) / std, (xt - mean) / std
    y = (torch.nan_to_num(tables.scores[train_idx], nan=0.0) > 0.5).float()  # [N, C]
    w = torch.zeros(x.shape[1], x.shape[2], requires_grad=True)  # [C, F]
    b = torch.zeros(x.shape[1], requires_grad=True)  # [C]
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (xt * w).sum(2) + b  # [N, C]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        prob = torch.sigmoid((x * w).sum(2) + b)  # [S, C]
    constant = (y.min(0).values == y.max(0).values)  # [C]
    return torch.where(constant[None], y[0][None].expand_as(prob), prob).detach()


def probe_choices(prob: torch.Tensor, latency_ms: torch.Tensor, budget_ms: float,
                  tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, the fitting configuration the probe rates highest; the fastest where none fits ([S])."""
    score = prob + (1e-6 * tie_break[None] if tie_break is not None else 0)  # [S, C]
    fits = latency_ms <= budget_ms  # [S, C]
    best = torch.where(fits, score, torch.tensor(-1.0)).argmax(1)  # [S]
    fastest = latency_ms.argmin(1)  # [S]
    return torch.where(fits.any(1), best, fastest)

