"""The reward of a sampled configuration: a registry of terms and their weights.

Each term is one :class:`RewardTerm` in :data:`REWARD_TERMS`: a name, the ``reward`` key of
params.yaml that holds its weight, the sign it enters with, its default weight, and its value for
each sampled (sample, configuration) cell, all unitless (about 0..1). The reward is the terms'
signed, weighted sum, added in registry order:

    reward = alpha * accuracy - beta * latency - gamma * violation + delta * efficiency
             - epsilon * complexity

A term has two forms. The *sampled* form reads the latency the reward sees (one draw from the
configuration's profiled spread with ``train_controller.latency_sampling: spread``, the default,
or the estimate with ``median``). The *expected* form, for ``latency_sampling: expected``, is its
expectation over that spread in closed form (:mod:`knobctl.controller.spread`): the same mean
reward without the draw's noise, so a group's advantages differ by accuracy and by each
configuration's real risk of running over, not by which draws came up slow. A term that does not
read the latency is its own expectation and gives no expected form.

What each term measures, and when it acts, is in its ``doc``. The "when" follows from the fit
mask (``train_controller.fit_mask``, the default): the policy samples only configurations whose
*estimated* latency fits, so a term that rewards fitting or punishes overshoot acts only where a
draw from the spread runs over (near the budget's edge), or, with ``median``, only where nothing
fits and the cheapest configuration is forced. docs/adding-a-reward-term.md adds a term.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from knobctl.controller.spread import draw_latency, expected_overshoot, violation_probability
from knobctl.params import check_keys, convert, require

MAX_WEIGHT = 1e3  # |weight| bound: the terms are about 0..1, so 1e3 already drowns every other term


@dataclass(frozen=True)
class TermInputs:
    """What a term reads for the sampled cells; every tensor broadcasts to the accuracy's shape ([B, G] in
    training)."""

    accuracy: torch.Tensor  # the accuracy the reward sees, 0..1 (cached score, the probe's share mixed in)
    latency_ms: torch.Tensor  # the request's latency: a draw from the spread, the estimate, or its median
    budget_ms: torch.Tensor  # the group's budget
    complexity: torch.Tensor  # the configuration's size, 0..1 (controller/tables.py)
    spread: torch.Tensor | None = None  # [..., 2] (low, high) latency ratios; read by expected forms only


Form = Callable[[TermInputs], torch.Tensor]


@dataclass(frozen=True)
class RewardTerm:
    """One term of the reward. ``sign`` is +1 for a term the reward gains (weighted by a weight >= 0 unless
    ``negative_ok``) and -1 for a penalty. ``expected`` is None for a term that does not read the latency."""

    name: str
    key: str  # its weight's key in params.yaml's reward section
    sign: int
    default: float
    sampled: Form
    expected: Form | None = None
    negative_ok: bool = False  # a negative weight turns the term's direction (a preference, not an error)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise ValueError(f"reward term {self.name!r}: sign must be +1 or -1, got {self.sign!r}")

    def value(self, x: TermInputs, expected: bool = False) -> torch.Tensor:
        """The term's sampled form, or its expectation over the latency spread."""
        form = self.expected if expected and self.expected is not None else self.sampled
        return form(x)


def accuracy(c: TermInputs) -> torch.Tensor:
    return c.accuracy


def latency(c: TermInputs) -> torch.Tensor:
    return c.latency_ms / c.budget_ms


def expected_latency(c: TermInputs) -> torch.Tensor:
    low, high = c.spread[..., 0], c.spread[..., 1]
    return c.latency_ms * (low + high) / 2 / c.budget_ms


def violation(c: TermInputs) -> torch.Tensor:
    return (c.latency_ms - c.budget_ms).clamp(min=0) / c.budget_ms


def expected_violation(c: TermInputs) -> torch.Tensor:
    return expected_overshoot(c.latency_ms, c.budget_ms, c.spread) / c.budget_ms


def efficiency(c: TermInputs) -> torch.Tensor:
    return c.accuracy * (c.latency_ms <= c.budget_ms).to(c.accuracy.dtype)


def expected_efficiency(c: TermInputs) -> torch.Tensor:
    return c.accuracy * (1 - violation_probability(c.latency_ms, c.budget_ms, c.spread))


def complexity(c: TermInputs) -> torch.Tensor:
    return c.complexity.expand_as(c.accuracy)


def _registry(*terms: RewardTerm) -> dict[str, RewardTerm]:
    return {t.name: t for t in terms}


#: Every term of the reward, by name, in the order the reward adds them (that order fixes the float sum's bits).
#: A plain dict, so a test can add a term for its own duration (``monkeypatch.setitem``).
REWARD_TERMS: dict[str, RewardTerm] = _registry(
    RewardTerm("accuracy", "alpha", +1, 1.0, accuracy,
               doc="the cached VQA score of (sample, configuration), 0..1; acts always"),
    RewardTerm("latency", "beta", -1, 0.0, latency, expected_latency, negative_ok=True,
               doc="request ms / budget ms (1.0 = exactly the budget); acts always: > 0 prefers faster picks"),
    RewardTerm("violation", "gamma", -1, 2.0, violation, expected_violation,
               doc="max(0, latency - budget) / budget, the relative overshoot; with the fit mask it acts near the "
                   "budget's edge (spread, expected) or only where nothing fits (median)"),
    RewardTerm("efficiency", "delta", +1, 0.5, efficiency, expected_efficiency,
               doc="the accuracy if the request fits the budget, else 0 (a right answer in time); with the fit mask "
                   "it acts near the budget's edge (spread, expected) or as accuracy does (median)"),
    RewardTerm("complexity", "epsilon", -1, -0.02, complexity, negative_ok=True,
               doc="the configuration's size, the mean of its three knob positions each scaled to 0..1 over the grid "
                   "(low tier / smallest top_k / fewest blocks = 0, the full one = 1); acts always. A negative weight "
                   "(the default) prefers the larger of two configurations that are both right and in budget: without "
                   "it such ties give no gradient and the argmax for most samples ends up arbitrary; with a positive "
                   "one the pairwise loss collapses onto the cheapest configuration (docs/LOG.md, \"Reward "
                   "weights\")"),
)


class RewardWeights(Mapping[str, float]):
    """The ``reward`` section of params.yaml: term name -> weight, one entry per registered term (a term left out
    takes its default). Built from params by each term's key (:meth:`from_params`), written back the same way
    (:meth:`as_params`); immutable, and every weight is checked when it is built."""

    __slots__ = ("_weights",)

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        given = dict(weights or {})
        unknown = sorted(set(given) - set(REWARD_TERMS))
        require(not unknown, "reward", unknown, f"unknown terms; the terms are {', '.join(REWARD_TERMS)}")
        signed = [t.key for t in REWARD_TERMS.values() if t.negative_ok]
        values = {}
        for term in REWARD_TERMS.values():
            value = given.get(term.name, term.default)
            require(not isinstance(value, bool) and isinstance(value, (int, float)) and abs(value) <= MAX_WEIGHT,
                    f"reward.{term.key}", value, f"every weight is a finite number in [-{MAX_WEIGHT:g}, "
                    f"{MAX_WEIGHT:g}] (the terms are unitless, about 0..1: a larger weight only overflows the loss)")
            require(term.negative_ok or value >= 0, f"reward.{term.key}", value,
                    f"it must be >= 0 (its sign is in the formula); only {' and '.join(signed)} may be negative "
                    "(a preference in the other direction)")
            values[term.name] = float(value)
        object.__setattr__(self, "_weights", MappingProxyType(values))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RewardWeights is immutable; build a new one")

    def __getitem__(self, term: str) -> float:
        return self._weights[term]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __hash__(self) -> int:
        return hash(tuple(self._weights.items()))

    def __repr__(self) -> str:
        return f"RewardWeights({dict(self._weights)!r})"

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None, name: str = "reward") -> RewardWeights:
        """From params.yaml's ``reward`` section (keys as :data:`REWARD_TERMS` names them), each value read as a
        number as :func:`knobctl.params.build` reads one."""
        section = {} if section is None else section
        require(isinstance(section, Mapping), name, section, "expected a mapping of keys to values")
        by_key = {t.key: t for t in REWARD_TERMS.values()}
        check_keys(section, by_key, name)
        return cls({by_key[k].name: convert(v, float, f"{name}.{k}") for k, v in section.items()})

    def as_params(self) -> dict[str, float]:
        """The weights by params key, as params.yaml's ``reward`` section writes them."""
        return {t.key: self._weights[t.name] for t in REWARD_TERMS.values()}


def reward_terms(accuracy: torch.Tensor, latency_ms: torch.Tensor, budget_ms: torch.Tensor,
                 complexity: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every registered term's sampled form, all of one shape (broadcast)."""
    x = TermInputs(accuracy, latency_ms, budget_ms, complexity)
    return {name: term.value(x) for name, term in REWARD_TERMS.items()}


def expected_reward_terms(accuracy: torch.Tensor, latency_ms: torch.Tensor, budget_ms: torch.Tensor,
                          complexity: torch.Tensor, spread: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every registered term's expectation over the latency spread (``spread`` [..., 2], each cell's
    configuration's (low, high) ratios; :mod:`knobctl.controller.spread`), in closed form."""
    x = TermInputs(accuracy, latency_ms, budget_ms, complexity, spread)
    return {name: term.value(x, expected=True) for name, term in REWARD_TERMS.items()}


def combine(w: RewardWeights, t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The signed, weighted sum of the terms, added left to right in registry order (the formula in the module
    docstring): float addition is not associative, so the order fixes the reward's bits."""
    total: torch.Tensor | None = None
    for name, term in REWARD_TERMS.items():
        part = w[name] * t[name]
        if total is None:
            total = part if term.sign > 0 else -part
        else:
            total = total + part if term.sign > 0 else total - part
    if total is None:
        raise ValueError("no reward term is registered")
    return total


def reward(w: RewardWeights, accuracy: torch.Tensor, latency_ms: torch.Tensor, budget_ms: torch.Tensor,
           complexity: torch.Tensor) -> torch.Tensor:
    return combine(w, reward_terms(accuracy, latency_ms, budget_ms, complexity))


#: How training prices a sampled configuration's latency (``train_controller.latency_sampling``): each takes
#: (weights, accuracy, estimated latency, budget, complexity, spread, generator), all [B, G] but the budget [B, 1]
#: and the spread [B, G, 2], and returns (the reward [B, G], the latency it saw [B, G], which the curves' violation
#: rate reads). ``spread``: one draw from the configuration's profiled spread; ``expected``: the reward's
#: expectation over that spread in closed form (the latency it saw is the estimate); ``median``: the estimate.
LatencyPricing = Callable[[RewardWeights, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _drawn(w: RewardWeights, acc: torch.Tensor, lat: torch.Tensor, budget: torch.Tensor, complexity: torch.Tensor,
           spread: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    lat = draw_latency(lat, spread, gen)  # [B, G]
    return reward(w, acc, lat, budget, complexity), lat


def _expected(w: RewardWeights, acc: torch.Tensor, lat: torch.Tensor, budget: torch.Tensor, complexity: torch.Tensor,
              spread: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return combine(w, expected_reward_terms(acc, lat, budget, complexity, spread)), lat


def _estimate(w: RewardWeights, acc: torch.Tensor, lat: torch.Tensor, budget: torch.Tensor, complexity: torch.Tensor,
              spread: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return reward(w, acc, lat, budget, complexity), lat


LATENCY_PRICING: Mapping[str, LatencyPricing] = MappingProxyType(
    {"spread": _drawn, "expected": _expected, "median": _estimate})
