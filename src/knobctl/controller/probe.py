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


def _standardised(tables: CacheTables, train_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Language [S, D] and vision [S, T, D] features scaled by the training samples' mean and std."""
    language, vision = tables.language.float(), tables.vision.float()
    lt, vt = language[train_idx], vision[train_idx]
    language = (language - lt.mean(0)) / lt.std(0).clamp(min=1e-6)
    vision = (vision - vt.mean(0)) / vt.std(0).clamp(min=1e-6)
    return language, vision


def fit_probe(tables: CacheTables, train_idx: torch.Tensor, l2: float = L2, max_iter: int = 200) -> torch.Tensor:
    """P(right) for every sample and configuration ([S, C]), fitted on ``train_idx`` only.

    Configuration ``c`` sees the language feature and the vision feature at its tier, so its logit is
    ``language . w_lang[c] + vision[tier(c)] . w_vision[c] + b[c]``: computed per tier, never as an
    [S, C, 2D] feature tensor (about 20x faster on the default table). A configuration whose training
    labels are all equal predicts that label (nothing to fit)."""
    language, vision = _standardised(tables, train_idx)  # [S, D], [S, T, D]
    tier_of = torch.tensor([tables.tiers.index(k.tier) for k in tables.configs])  # [C]
    num_configs, cols = len(tables.configs), torch.arange(len(tables.configs))
    y = (torch.nan_to_num(tables.scores[train_idx], nan=0.0) > 0.5).float()  # [N, C]
    w_lang = torch.zeros(num_configs, language.shape[1], requires_grad=True)  # [C, D]
    w_vision = torch.zeros(num_configs, vision.shape[2], requires_grad=True)  # [C, D]
    b = torch.zeros(num_configs, requires_grad=True)  # [C]

    def logits(rows: torch.Tensor) -> torch.Tensor:
        by_tier = vision[rows] @ w_vision.T  # [N, T, C]: every tier against every configuration
        return language[rows] @ w_lang.T + by_tier[:, tier_of, cols] + b  # [N, C]

    opt = torch.optim.LBFGS([w_lang, w_vision, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(train_idx), y, reduction="sum")
        loss = loss + 0.5 * l2 * ((w_lang * w_lang).sum() + (w_vision * w_vision).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        prob = torch.sigmoid(logits(torch.arange(language.shape[0])))  # [S, C]
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

