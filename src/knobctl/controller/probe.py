"""The supervised probe: per configuration, P(answer right | the controller's features), on cached tables.

One L2-regularised logistic regression per configuration, fitted on the training samples'
language feature and the vision feature at that configuration's tier (standardised with the
training samples' mean and std), predicts whether the configuration answers a sample right
(VQA score > 0.5). A request then takes the fitting configuration with the highest
prediction ("the most accurate configuration that fits"). It is the supervised baseline the
GRPO controller is compared with in train_controller's evaluation and in validate: no policy,
no reward, and a ceiling for what the features carry about which configuration a request needs.
Unlike the two-stage controller it reads the vision feature at *every* tier before choosing,
which a live request would have to pay for; validate times only the configuration it picks.

Each configuration is fitted by scikit-learn's logistic regression; the fitted weights are kept as
``[C, D]`` torch tensors, so predicting is two matrix products, and a fitted :class:`Probe` is
saved beside the controller (``probe.safetensors``, ``probe.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from knobctl.controller.tables import CacheTables
from knobctl.io import atomic_path
from knobctl.weights import check_finite, load_tensors

# The penalty on the summed training log-loss: 1 / C in scikit-learn's terms. 100 (C = 0.01) is what
# benchmarks/controller_ceiling.py measured best; a weak penalty lets the argmax over 75 noisy
# per-configuration fits pick a worse configuration than static (the winner's curse).
L2 = 100.0
WEIGHTS, META = "probe.safetensors", "probe.json"


@dataclass(frozen=True)
class Probe:
    """A fitted probe: normalisers, one logistic regression per configuration, and the configurations
    whose training labels were all equal (they predict that label: nothing to fit)."""

    language_mean: torch.Tensor  # [D]
    language_std: torch.Tensor  # [D]
    vision_mean: torch.Tensor  # [T, D]
    vision_std: torch.Tensor  # [T, D]
    w_language: torch.Tensor  # [C, D]
    w_vision: torch.Tensor  # [C, D]
    bias: torch.Tensor  # [C]
    tier_of: torch.Tensor  # [C] tier index of each configuration
    constant: torch.Tensor  # [C] bool: every training label equal
    constant_value: torch.Tensor  # [C] that label

    def logits(self, language: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """Raw features, language [N, D] and vision at every tier [N, T, D] -> [N, C].

        Configuration ``c``'s logit is ``language . w_language[c] + vision[tier(c)] . w_vision[c] + b[c]``:
        computed per tier, never as an [N, C, 2D] feature tensor (about 20x faster on the default table)."""
        lang = (language.float() - self.language_mean) / self.language_std  # [N, D]
        vis = (vision.float() - self.vision_mean) / self.vision_std  # [N, T, D]
        by_tier = vis @ self.w_vision.T  # [N, T, C]: every tier against every configuration
        cols = torch.arange(len(self.bias))
        return lang @ self.w_language.T + by_tier[:, self.tier_of, cols] + self.bias  # [N, C]

    def predict(self, language: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """P(right) per sample and configuration: [N, C]."""
        with torch.no_grad():
            prob = torch.sigmoid(self.logits(language, vision))  # [N, C]
        return torch.where(self.constant[None], self.constant_value[None].expand_as(prob), prob)

    @classmethod
    def unfitted(cls, tables: CacheTables, train_idx: torch.Tensor) -> tuple[Probe, torch.Tensor]:
        """The probe's normalisers, tiers and constant labels from the ``train_idx`` rows, with zero weights, and
        those rows' labels [N, C] (VQA score > 0.5, a missing cell wrong): what every solver starts from."""
        lt, vt = tables.language[train_idx].float(), tables.vision[train_idx].float()
        y = (torch.nan_to_num(tables.scores[train_idx], nan=0.0) > 0.5).float()  # [N, C]
        num_configs, dim_l, dim_v = y.shape[1], lt.shape[1], vt.shape[2]
        probe = cls(language_mean=lt.mean(0), language_std=lt.std(0).clamp(min=1e-6), vision_mean=vt.mean(0),
                    vision_std=vt.std(0).clamp(min=1e-6), w_language=torch.zeros(num_configs, dim_l),
                    w_vision=torch.zeros(num_configs, dim_v), bias=torch.zeros(num_configs),
                    tier_of=torch.tensor([tables.tiers.index(k.tier) for k in tables.configs]),
                    constant=y.min(0).values == y.max(0).values, constant_value=y[0].clone())
        return probe, y

    @classmethod
    def fit(cls, tables: CacheTables, train_idx: torch.Tensor, l2: float = L2, max_iter: int = 1000) -> Probe:
        """Fitted on the ``train_idx`` rows of ``tables`` only: scikit-learn's ``LogisticRegression(C=1 / l2)``
        (L-BFGS, unpenalised intercept) per configuration, in float64 on the standardised features, on one BLAS
        thread so that the weights are the same bytes whatever the core count. ``tol`` 1e-6: scikit-learn's
        default (1e-4) stops about 2e-3 short of the optimum in P(right) on the default table, which moves
        the argmax over 75 configurations (docs/LOG.md, "The probe through scikit-learn")."""
        start, y = cls.unfitted(tables, train_idx)
        lang = ((tables.language[train_idx].float() - start.language_mean) / start.language_std).double()  # [N, D]
        vis = ((tables.vision[train_idx].float() - start.vision_mean) / start.vision_std).double()  # [N, T, D]
        labels = y.numpy()
        w_language, w_vision, bias = start.w_language.clone(), start.w_vision.clone(), start.bias.clone()
        dim_l = lang.shape[1]
        with threadpool_limits(limits=1):
            for c, tier in enumerate(start.tier_of.tolist()):
                if start.constant[c]:  # one label only: nothing to fit, and predict() returns that label
                    continue
                x = torch.cat([lang, vis[:, tier]], 1).numpy()  # [N, 2D]
                model = LogisticRegression(C=1.0 / l2, tol=1e-6, max_iter=max_iter).fit(x, labels[:, c])
                coef = torch.from_numpy(model.coef_[0]).float()
                w_language[c], w_vision[c], bias[c] = coef[:dim_l], coef[dim_l:], float(model.intercept_[0])
        return cls(**{**start.__dict__, "w_language": w_language, "w_vision": w_vision, "bias": bias})

    def save(self, directory: str | Path) -> None:
        """``probe.safetensors`` and ``probe.json`` into ``directory`` (each written atomically)."""
        directory = Path(directory)
        tensors = {k: v.contiguous() for k, v in self.__dict__.items()}
        tensors["constant"] = tensors["constant"].to(torch.uint8)  # safetensors stores bool, but uint8 reads anywhere
        check_finite(tensors, directory / WEIGHTS, "Raise train_controller.probe_l2 or check data/rollouts' features.")
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(directory / META) as tmp:
            tmp.write_text(json.dumps({"configs": len(self.bias), "method": "one L2 logistic regression per "
                                       "configuration (knobctl.controller.probe)"}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Probe:
        path = Path(directory) / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run `dvc repro train_controller`, which fits the probe "
                                    "beside the controller")
        tensors = load_tensors(path, "rerun `dvc repro train_controller`, which fits the probe beside the controller")
        tensors["constant"] = tensors["constant"].bool()
        return cls(**tensors)


def fit_probe(tables: CacheTables, train_idx: torch.Tensor, l2: float = L2, max_iter: int = 1000) -> torch.Tensor:
    """P(right) for every sample and configuration of ``tables`` ([S, C]), fitted on ``train_idx`` only."""
    return Probe.fit(tables, train_idx, l2, max_iter).predict(tables.language, tables.vision)


def probe_choices(prob: torch.Tensor, latency_ms: torch.Tensor, budget_ms: float | torch.Tensor,
                  tie_break: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample, the fitting configuration the probe rates highest; the fastest where none fits ([S]).
    ``budget_ms`` is one budget for all samples or one per sample ([S, 1])."""
    score = prob + (1e-6 * tie_break[None] if tie_break is not None else 0)  # [S, C]
    fits = latency_ms <= budget_ms  # [S, C]
    best = torch.where(fits, score, torch.tensor(-1.0)).argmax(1)  # [S]
    fastest = latency_ms.argmin(1)  # [S]
    return torch.where(fits.any(1), best, fastest)
