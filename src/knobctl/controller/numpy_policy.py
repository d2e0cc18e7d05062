"""Both stages' argmax for one live request, in float64 numpy (torch only reads the controller's weights).

:class:`NumpyPolicy` folds the normalisers and the tier one-hot of a :class:`knobctl.controller.policy.Controller`
into its first layers' weights. Eager torch pays a dispatch cost per op on a batch of one, and the two small
networks' two dozen ops made up most of the controller's share of a request on the CPU (docs/LOG.md, "What the
controller adds to a request, in numpy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf
from torch import nn

from knobctl.controller.policy import Controller, ControllerConfig


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))  # nn.GELU's exact (erf) form


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _linears(seq: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W [in, out], b [out]) of every Linear in an ``_mlp``, float64."""
    return [(m.weight.detach().double().numpy().T.copy(), m.bias.detach().double().numpy().copy())
            for m in seq if isinstance(m, nn.Linear)]


@dataclass(frozen=True)
class NumpyPolicy:
    """Both stages' argmax for one request without torch (module docstring); equal to
    :meth:`Controller.choose_tier` / :meth:`Controller.choose_pair` up to float rounding."""

    config: ControllerConfig
    frequencies: np.ndarray  # [F]
    stage1_in: tuple[np.ndarray, np.ndarray, np.ndarray]  # W language [D, h], W budget [1+2F, h], b [h]
    # W vision [Dv, h], W language [D, h], W budget [1+2F, h], b per tier [T, h]
    stage2_in: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    stage1_rest: tuple[tuple[np.ndarray, np.ndarray], ...]
    stage2_rest: tuple[tuple[np.ndarray, np.ndarray], ...]
    fit_latency_ms: np.ndarray  # [L, T, P]

    @classmethod
    def from_controller(cls, ctrl: Controller) -> NumpyPolicy:
        c = ctrl.config
        lang_m, lang_s = ctrl.language_mean.double().numpy(), ctrl.language_std.double().numpy()
        vis_m, vis_s = ctrl.vision_mean.double().numpy(), ctrl.vision_std.double().numpy()
        (w1, b1), *rest1 = _linears(ctrl.stage1)
        # (x - m) / s @ W = x @ (W / s) - (m / s) @ W: the standardisation becomes weights and a bias.
        w1_lang = w1[: c.language_dim] / lang_s[:, None]  # [D, h]
        b1 = b1 - (lang_m / lang_s) @ w1[: c.language_dim]  # [h]
        (w2, b2), *rest2 = _linears(ctrl.stage2)
        # stage 2's input is [vision, tier one-hot, language, budget code]
        dv, t, dl = c.vision_dim, len(c.tiers), c.language_dim
        w2_vis, w2_tier, w2_lang, w2_budget = np.split(w2, [dv, dv + t, dv + t + dl])
        b2 = b2 - (vis_m / vis_s) @ w2_vis - (lang_m / lang_s) @ w2_lang  # [h]
        per_tier = b2[None, :] + w2_tier  # [T, h]: the one-hot row is a bias per tier
        return cls(c, ctrl.frequencies.double().numpy(), (w1_lang, w1[c.language_dim :], b1),
                   (w2_vis / vis_s[:, None], w2_lang / lang_s[:, None], w2_budget, per_tier),
                   tuple(rest1), tuple(rest2),
                   ctrl.fit_latency_ms.double().numpy().reshape(c.fit_rows, t, len(c.pairs)).copy())

    def feasible(self, text_tokens: int, budget_ms: float) -> np.ndarray | None:
        """[T, P] as :meth:`Controller.feasible` for one request; None without ``fit_mask``."""
        c = self.config
        if not c.fit_mask:
            return None
        lat = self.fit_latency_ms[min(max(text_tokens - c.fit_text_tokens[0], 0), c.fit_rows - 1)]  # [T, P]
        ok = lat <= budget_ms
        if not ok.any():
            ok = np.zeros_like(ok)
            ok.flat[lat.argmin()] = True
        return ok

    def budget_code(self, budget_ms: float) -> np.ndarray:
        c = self.config
        x = min(max((budget_ms - c.budget_low_ms) / (c.budget_high_ms - c.budget_low_ms), c.budget_x_range[0]),
                c.budget_x_range[1])
        angles = x * self.frequencies  # [F]
        return np.concatenate([[x], np.sin(angles), np.cos(angles)])  # [1+2F]

    def _rest(self, h: np.ndarray, layers: tuple[tuple[np.ndarray, np.ndarray], ...]) -> np.ndarray:
        act = _gelu if self.config.activation == "gelu" else _relu
        for w, b in layers:
            h = act(h) @ w + b
        return h

    def tier_logits(self, language: np.ndarray, budget_ms: float) -> np.ndarray:
        """Stage 1: language [D] -> [T]."""
        w_lang, w_budget, b = self.stage1_in
        return self._rest(language @ w_lang + self.budget_code(budget_ms) @ w_budget + b, self.stage1_rest)

    def pair_logits(self, vision: np.ndarray, tier: int, language: np.ndarray, budget_ms: float) -> np.ndarray:
        """Stage 2: vision at the chosen tier [Dv], tier index, language [D] -> [P]."""
        w_vis, w_lang, w_budget, b = self.stage2_in
        h = vision @ w_vis + language @ w_lang + self.budget_code(budget_ms) @ w_budget + b[tier]  # [h]
        return self._rest(h, self.stage2_rest)

    def choose_tier(self, language: np.ndarray, budget_ms: float, allowed: np.ndarray | None = None) -> int:
        """Stage 1 argmax among ``allowed`` tiers ([T] bool, or all)."""
        logits = self.tier_logits(language, budget_ms)
        return int(logits.argmax() if allowed is None else np.where(allowed, logits, -np.inf).argmax())

    def choose_pair(self, vision: np.ndarray, tier: int, language: np.ndarray, budget_ms: float,
                    allowed: np.ndarray | None = None) -> int:
        """Stage 2 argmax among ``allowed`` pairs ([P] bool, or all)."""
        logits = self.pair_logits(vision, tier, language, budget_ms)
        return int(logits.argmax() if allowed is None else np.where(allowed, logits, -np.inf).argmax())
