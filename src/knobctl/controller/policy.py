"""The two-stage latency-budget controller: a pure torch policy over the knob grid.

Stage 1, before the vision encoder runs: P(tier | language feature, budget code).
Stage 2, after the decision block at the chosen tier: P(top_k, num_blocks | vision feature
at that tier, the tier itself (one-hot), language feature, budget code), one categorical
over the top_k x num_blocks pairs (so the two knobs can depend on each other). The tier is
an explicit input because the right pair depends on it: a high tier leaves less of the
budget for blocks. Without it, stage 2 has to recognise the tier from the vision feature,
learns pairs that suit the tier stage 1 favours early, and stage 1 then never finds the
other tiers worth their latency (measured: training collapses onto the low tier).

Inputs (definitions in :mod:`knobctl.model.features`) are standardised with the training table's
mean and std, stored with the weights. The budget code of a budget of ``b`` ms is
``x = (b - budget_low_ms) / (budget_high_ms - budget_low_ms)`` followed by
``sin(2^i * pi * x)`` and ``cos(2^i * pi * x)`` for i = 0..budget_frequencies-1. The two
ends are medians over the training samples of the estimated latency of the cheapest and
of the full configuration, so x = 0 is "only the cheapest fits" and x = 1 "the full one
fits": the whole range where a choice exists spans one unit, whatever the model or
machine. The raw x keeps the order of budgets; the sinusoids let a small network carve
the axis into sharp regions (a knob switches at a threshold). x is clamped to
``budget_x_range``, the range training drew budgets from: below it nothing fits and above
it everything does, so the boundary's choice is the right one there, whereas the
sinusoids would wrap around to some unrelated budget.

Fit mask (``fit_mask: true``, the default of train_controller). The controller carries the
latency estimator's total for every configuration at every question length
(``fit_latency_ms`` [L, C], question lengths ``fit_text_tokens[0]`` .. ``fit_text_tokens[1]``
in tokens, at the table's answer length; longer or shorter questions take the nearest row).
Given a request's question length and budget, both stages choose only among the
configurations that fit: stage 1 among tiers with at least one fitting configuration, stage 2
among the fitting pairs of the chosen tier. Where none fits, the cheapest configuration alone
is allowed. The networks then learn which of the fitting configurations a request needs,
not where the budget boundary lies: a boundary learned from samples is blurred, and is
measured to cost both violations and the larger configurations that short questions afford.
This is invalid-action masking from reinforcement learning, with "invalid" read off the
estimator. The question length is known before stage 1 (the question is tokenized first).

Both stages are two-hidden-layer MLPs, ReLU by default (``activation``; exact erf GELU is the other choice,
and that of a controller saved without the key): it trains faster with the same held-out choices (docs/LOG.md,
"ReLU, the whole val split and G = 16").

Saved in one folder as ``controller.safetensors`` (weights and normalisers), ``controller.json`` (the config)
and ``manifest.json`` (every file's hash and the grid, checked before anything is parsed: :mod:`knobctl.weights`).

:class:`knobctl.controller.numpy_policy.NumpyPolicy` runs the same argmax for one live request in numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from knobctl.io import atomic_dir
from knobctl.knobs import KnobConfig, KnobGrid, describe_configs
from knobctl.params import ParamsError
from knobctl.weights import (
    ArtifactMismatch,
    UnreadableWeights,
    check_finite,
    check_manifest,
    load_json,
    load_tensors,
    write_manifest,
)

WEIGHTS, CONFIG = "controller.safetensors", "controller.json"
#: Written by train_controller beside the weights: the reward weights, seed and training params that made them.
TRAINED_WITH = "trained_with.json"
NONFINITE_FIX = "Lower train_controller.lr or the reward weights (params.yaml, reward:)."


@dataclass(frozen=True)
class ControllerConfig:
    """Shapes and knob values of a controller; ``pairs`` are (top_k, num_blocks), top_k-major."""

    language_dim: int
    vision_dim: int
    tiers: tuple[str, ...]
    top_k: tuple[int, ...]
    num_blocks: tuple[int, ...]
    budget_low_ms: float
    budget_high_ms: float
    hidden: int = 64
    budget_frequencies: int = 6
    dropout: float = 0.0  # on both stages' inputs, in training only
    budget_x_range: tuple[float, float] = (-0.25, 1.1)  # x is clamped to the range training covered
    fit_mask: bool = False  # choose only among configurations that fit (module docstring)
    fit_text_tokens: tuple[int, int] = (0, 0)  # question lengths of the first and last fit_latency_ms rows
    activation: str = "relu"  # of both MLPs: relu | gelu (exact, erf); a saved config without the key is gelu

    @property
    def budget_dim(self) -> int:
        return 1 + 2 * self.budget_frequencies

    @property
    def fit_rows(self) -> int:
        return self.fit_text_tokens[1] - self.fit_text_tokens[0] + 1

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(k, b) for k in self.top_k for b in self.num_blocks]

    @property
    def configs(self) -> list[KnobConfig]:
        """Configuration index = tier index * len(pairs) + pair index: the knobs grid's order."""
        return [KnobConfig(t, k, b) for t in self.tiers for k, b in self.pairs]

    @classmethod
    def from_json(cls, data: dict) -> ControllerConfig:
        tuples = ("tiers", "top_k", "num_blocks", "budget_x_range", "fit_text_tokens")
        return cls(**{**data, **{k: tuple(data[k]) for k in tuples if k in data}})


MASKED = -1e9  # logit of a configuration that does not fit: probability 0 without NaN in entropies
ACTIVATIONS = ("gelu", "relu")


def _mlp(inp: int, hidden: int, out: int, dropout: float, activation: str) -> nn.Sequential:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r}; allowed: {', '.join(ACTIVATIONS)}")
    act = nn.GELU if activation == "gelu" else nn.ReLU
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(inp, hidden), act(), nn.Linear(hidden, hidden), act(),
                         nn.Linear(hidden, out))


class Controller(nn.Module):
    """Both stages; every method is batched and works on standardised features internally."""

    def __init__(self, config: ControllerConfig):
        super().__init__()
        self.config = config
        c = config
        self.stage1 = _mlp(c.language_dim + c.budget_dim, c.hidden, len(c.tiers), c.dropout, c.activation)
        self.stage2 = _mlp(c.vision_dim + len(c.tiers) + c.language_dim + c.budget_dim, c.hidden, len(c.pairs),
                           c.dropout, c.activation)
        for name, dim in (("language", c.language_dim), ("vision", c.vision_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(c.budget_frequencies, dtype=torch.float32))
        self.register_buffer("fit_latency_ms", torch.zeros(c.fit_rows, len(c.tiers) * len(c.pairs)))

    def set_normalisers(self, language: torch.Tensor, vision: torch.Tensor) -> None:
        """Feature mean/std from training features [S, D] and [S, T, D] (all tiers pooled)."""
        flat = vision.reshape(-1, vision.shape[-1])  # [S*T, D]
        self.language_mean.copy_(language.mean(0))
        self.language_std.copy_(language.std(0).clamp(min=1e-6))
        self.vision_mean.copy_(flat.mean(0))
        self.vision_std.copy_(flat.std(0).clamp(min=1e-6))

    def budget_code(self, budget_ms: torch.Tensor) -> torch.Tensor:
        """[...] budgets in ms -> [..., 1 + 2F] code (module docstring)."""
        c = self.config
        x = ((budget_ms - c.budget_low_ms) / (c.budget_high_ms - c.budget_low_ms)).clamp(*c.budget_x_range)
        x = x.unsqueeze(-1)  # [..., 1]
        angles = x * self.frequencies  # [..., F]
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)

    def _lang(self, language: torch.Tensor) -> torch.Tensor:
        return (language - self.language_mean) / self.language_std

    def _vis(self, vision: torch.Tensor) -> torch.Tensor:
        return (vision - self.vision_mean) / self.vision_std

    def feasible(self, text_tokens: torch.Tensor, budget_ms: torch.Tensor) -> torch.Tensor:
        """Question lengths [B] (tokens) and budgets [B] -> [B, T, P]: True where the
        configuration's estimated latency fits, or, where none does, at the cheapest alone."""
        c = self.config
        row = (torch.as_tensor(text_tokens, dtype=torch.long) - c.fit_text_tokens[0]).clamp(0, c.fit_rows - 1)  # [B]
        lat = self.fit_latency_ms[row]  # [B, C]
        fits = lat <= budget_ms[:, None]  # [B, C]
        # min/eq, not one_hot(argmin): one_hot's scatter was a third of this method's time in training
        cheapest = lat == lat.min(-1, keepdim=True).values  # [B, C]
        ok = fits | (cheapest & ~fits.any(-1, keepdim=True))  # [B, C]
        return ok.reshape(len(row), len(c.tiers), len(c.pairs))

    def tier_logits(self, language: torch.Tensor, budget_ms: torch.Tensor, allowed: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Stage 1: language [B, D], budgets [B], optional allowed tiers [B, T] -> [B, T]."""
        logits = self.stage1(torch.cat([self._lang(language), self.budget_code(budget_ms)], dim=-1))
        return logits if allowed is None else logits.masked_fill(~allowed, MASKED)

    def pair_logits(self, vision: torch.Tensor, tier: torch.Tensor, language: torch.Tensor,
                    budget_ms: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2: vision at the chosen tier [..., Dv], tier indices [...], language [..., D],
        budgets [...], optional allowed pairs at that tier [..., P] -> [..., P]."""
        onehot = torch.nn.functional.one_hot(tier, len(self.config.tiers)).to(vision.dtype)  # [..., T]
        logits = self.stage2(torch.cat([self._vis(vision), onehot, self._lang(language), self.budget_code(budget_ms)],
                                       dim=-1))
        return logits if allowed is None else logits.masked_fill(~allowed, MASKED)

    def stage_inputs(self, language: torch.Tensor, vision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages' inputs for a fixed set of samples with the budget code left zero (training's table,
        built once instead of standardised and concatenated again every step): language [S, D] and vision at
        every tier [S, T, Dv] -> stage 1's [S, D + code] and stage 2's at every tier [S, T, Dv + T + D + code].
        :meth:`stage_logits` takes rows of them."""
        s, t = vision.shape[0], vision.shape[1]
        lang = self._lang(language)  # [S, D]
        code = lang.new_zeros(s, self.config.budget_dim)  # [S, 1 + 2F]
        onehot = torch.nn.functional.one_hot(torch.arange(t), t).to(vision.dtype).expand(s, t, t)  # [S, T, T]
        stage2 = torch.cat([self._vis(vision), onehot, lang[:, None].expand(-1, t, -1), code[:, None].expand(-1, t, -1)],
                           dim=-1)  # [S, T, Dv + T + D + code]
        return torch.cat([lang, code], dim=-1), stage2

    def stage_logits(self, stage1_in: torch.Tensor, stage2_in: torch.Tensor, budget_ms: torch.Tensor,
                     allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Both stages' logits for a batch of :meth:`stage_inputs` rows (copies: the budget code is written
        into them): [B, D + code], [B, T, Dv + T + D + code], budgets [B], optional allowed pairs [B, T, P]
        -> tiers [B, T] and pairs at every tier [B, T, P], the values of :meth:`tier_logits` and
        :meth:`pair_logits` on the same rows."""
        width, t = self.config.budget_dim, stage2_in.shape[1]
        stage1_in[:, -width:] = self.budget_code(budget_ms)  # [B, 1 + 2F]
        # the code per (row, tier), as pair_logits computes it, so the sinusoids round alike
        stage2_in[..., -width:] = self.budget_code(budget_ms[:, None].expand(-1, t))  # [B, T, 1 + 2F]
        tier = self.stage1(stage1_in)  # [B, T]
        pair = self.stage2(stage2_in)  # [B, T, P]
        if allowed is None:
            return tier, pair
        return tier.masked_fill(~allowed.any(-1), MASKED), pair.masked_fill(~allowed, MASKED)

    @torch.no_grad()
    def choose_tier(self, language: torch.Tensor, budget_ms: torch.Tensor, allowed: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """Stage 1 argmax: tier indices [B]."""
        return self.tier_logits(language, budget_ms, allowed).argmax(-1)

    @torch.no_grad()
    def choose_pair(self, vision: torch.Tensor, tier: torch.Tensor, language: torch.Tensor,
                    budget_ms: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Stage 2 argmax: pair indices [B] (into ``config.pairs``)."""
        return self.pair_logits(vision, tier, language, budget_ms, allowed).argmax(-1)

    @torch.no_grad()
    def choose(self, language: torch.Tensor, vision: torch.Tensor, budget_ms: float | Sequence[float] | torch.Tensor,
               text_tokens: int | Sequence[int] | torch.Tensor | None = None) -> list[KnobConfig]:
        """Argmax configurations from cached features: language [B, D], vision at every tier
        [B, T, D], budgets (a number or [B] ms) and, for a controller with ``fit_mask``, the
        questions' lengths in tokens (a number or [B]). The live two-stage flow calls
        :meth:`choose_tier`, computes the vision feature at that tier, then :meth:`choose_pair`."""
        language = torch.as_tensor(language, dtype=torch.float32)
        vision = torch.as_tensor(vision, dtype=torch.float32)
        budget = torch.as_tensor(budget_ms, dtype=torch.float32).expand(language.shape[0])  # [B]
        ok = None
        if self.config.fit_mask:
            if text_tokens is None:
                raise ValueError("this controller chooses among configurations that fit (fit_mask): pass text_tokens, "
                                 "each question's length in tokens")
            ok = self.feasible(torch.as_tensor(text_tokens).expand(language.shape[0]), budget)  # [B, T, P]
        rows = torch.arange(language.shape[0])
        tier = self.choose_tier(language, budget, None if ok is None else ok.any(-1))  # [B]
        at_tier = vision[rows, tier]  # [B, D]
        pair = self.choose_pair(at_tier, tier, language, budget, None if ok is None else ok[rows, tier])  # [B]
        configs = self.config.configs
        return [configs[int(t) * len(self.config.pairs) + int(p)] for t, p in zip(tier, pair)]

    def check_grid(self, grid: KnobGrid, source: str | Path = "models/controller") -> None:
        """Refuse to run on another knob grid than the one the controller chooses from; name both."""
        c = self.config
        if (c.tiers, c.top_k, c.num_blocks) != (grid.tiers, grid.top_k, grid.num_blocks):
            raise ParamsError(f"{source} chooses among {describe_configs(c.configs)}, but params.yaml's knobs grid "
                              f"has {grid.describe()}; retrain it with `dvc repro train_controller` or set knobs: to "
                              "its grid")

    def manifest_facts(self) -> dict[str, Any]:
        """What the folder's manifest records beside the file hashes: the knobs grid it chooses among."""
        return {"grid": {"tiers": list(self.config.tiers), "top_k": list(self.config.top_k),
                         "num_blocks": list(self.config.num_blocks)}}

    def save(self, directory: str | Path) -> None:
        """Weights and config as ``directory``, swapped in whole, with their manifest; a writer that adds files
        to the folder (the stage: the probe, what trained it) writes the manifest again after them."""
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        check_finite(state, directory, NONFINITE_FIX)
        with atomic_dir(directory) as tmp:
            save_file(state, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            write_manifest(tmp, self.manifest_facts())

    @classmethod
    def load(cls, directory: str | Path) -> Controller:
        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            raise FileNotFoundError(f"{directory / CONFIG} not found; run `dvc repro train_controller`")
        rebuild = "rerun `dvc repro train_controller`"
        facts = check_manifest(directory, rebuild)  # before any file is parsed
        data = {"activation": "gelu", **load_json(directory / CONFIG, rebuild)}  # saved before relu existed
        model = cls(ControllerConfig.from_json(data))
        if facts.get("grid") != model.manifest_facts()["grid"]:
            raise ArtifactMismatch(f"{directory}: {CONFIG} chooses among another grid than its manifest records "
                                   f"({facts.get('grid')}); {rebuild}")
        state = load_tensors(directory / WEIGHTS, rebuild)
        if not model.config.fit_mask:  # saved before the fit mask existed
            state.setdefault("fit_latency_ms", model.fit_latency_ms)
        check_finite(state, directory / WEIGHTS, rebuild, loading=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # the config and the weights disagree: missing, unexpected or reshaped tensors
            first = str(exc).strip().splitlines()[1:2] or [str(exc)]
            raise UnreadableWeights(f"{directory}: {CONFIG} does not match {WEIGHTS} ({first[0].strip()}); "
                                    f"{rebuild}") from exc
        return model.eval()


def trained_with(directory: str | Path) -> dict[str, Any] | None:
    """What trained the controller in ``directory`` (:data:`TRAINED_WITH`), or None for a folder without it."""
    path = Path(directory) / TRAINED_WITH
    return json.loads(path.read_text()) if path.is_file() else None
