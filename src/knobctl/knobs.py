"""The three inference-time knobs and the grid they span.

A :class:`KnobConfig` is one point of the grid: vision token tier, MoE top-k and
number of transformer blocks executed. The grid comes from the ``knobs:`` section
of params.yaml; validating it against a model's shape happens here so every stage
fails the same way, with a message naming the value and what is allowed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from knobctl.params import ParamsError, build, require

#: Tier names in increasing order of visual tokens.
TIER_ORDER: tuple[str, ...] = ("low", "medium", "high")


@dataclass(frozen=True, order=True)
class KnobConfig:
    """One configuration: ``tier`` (low/medium/high), ``top_k`` experts, ``num_blocks`` run."""

    tier: str
    top_k: int
    num_blocks: int

    def __post_init__(self) -> None:
        if self.tier not in TIER_ORDER:
            raise ValueError(f"unknown tier {self.tier!r}; allowed tiers: {', '.join(TIER_ORDER)}")
        for name in ("top_k", "num_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def validate_for(self, *, num_experts: int, num_layers: int, tiers: Iterable[str]) -> None:
        """Raise ValueError unless a model with this shape can run this configuration."""
        tiers = tuple(tiers)
        if self.tier not in tiers:
            raise ValueError(f"tier {self.tier!r} is not defined for this model; it has: {', '.join(tiers)}")
        if not 1 <= self.top_k <= num_experts:
            raise ValueError(f"top_k={self.top_k} is outside 1..{num_experts} (the model's number of experts)")
        if not 1 <= self.num_blocks <= num_layers:
            raise ValueError(f"num_blocks={self.num_blocks} is outside 1..{num_layers} (the model's number of blocks)")

    @property
    def label(self) -> str:
        return f"{self.tier}/k{self.top_k}/b{self.num_blocks}"

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "top_k": self.top_k, "num_blocks": self.num_blocks}


def _int_axis(name: str, values: tuple[int, ...]) -> tuple[int, ...]:
    """A top_k or num_blocks axis, sorted; every entry a positive integer, none repeated."""
    require(isinstance(values, (tuple, list)) and len(values) > 0, f"knobs.{name}", values,
            "give a non-empty list of integers")
    for v in values:
        require(not isinstance(v, bool) and isinstance(v, int) and v >= 1, f"knobs.{name}", list(values),
                f"every entry must be a positive integer ({v!r} is not)")
    require(len(set(values)) == len(values), f"knobs.{name}", list(values), "it has duplicates")
    return tuple(sorted(values))


@dataclass(frozen=True)
class KnobGrid:
    """The cartesian grid of tiers x top_k x num_blocks (the ``knobs:`` section; 75 configurations by default).

    Tiers are kept in cost order (low, medium, high) and the integer axes sorted, whatever order
    params.yaml lists them in."""

    tiers: tuple[str, ...] = TIER_ORDER
    top_k: tuple[int, ...] = (4, 5, 6, 7, 8)
    num_blocks: tuple[int, ...] = (12, 13, 14, 15, 16)

    def __post_init__(self) -> None:
        require(isinstance(self.tiers, (tuple, list)) and len(self.tiers) > 0, "knobs.tiers", self.tiers,
                f"give a non-empty list of tiers ({', '.join(TIER_ORDER)})")
        for t in self.tiers:
            require(t in TIER_ORDER, "knobs.tiers", list(self.tiers), f"unknown tier {t!r}; allowed: {', '.join(TIER_ORDER)}")
        object.__setattr__(self, "tiers", tuple(t for t in TIER_ORDER if t in self.tiers))
        object.__setattr__(self, "top_k", _int_axis("top_k", self.top_k))
        object.__setattr__(self, "num_blocks", _int_axis("num_blocks", self.num_blocks))

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> KnobGrid:
        """Build from the ``knobs:`` section of params.yaml, naming any bad key or value."""
        return build(cls, section, "knobs")

    def configs(self) -> list[KnobConfig]:
        """All configurations, tier-major then top_k then num_blocks (a stable order)."""
        return [KnobConfig(t, k, b) for t, k, b in itertools.product(self.tiers, self.top_k, self.num_blocks)]

    def __len__(self) -> int:
        return len(self.tiers) * len(self.top_k) * len(self.num_blocks)

    @property
    def full(self) -> KnobConfig:
        """The most expensive configuration of the grid."""
        return KnobConfig(self.tiers[-1], self.top_k[-1], self.num_blocks[-1])

    @property
    def smallest(self) -> KnobConfig:
        """The cheapest configuration of the grid."""
        return KnobConfig(self.tiers[0], self.top_k[0], self.num_blocks[0])

    def corners(self) -> list[KnobConfig]:
        """The 2**3 corners (fewer when an axis has one value), full configuration first."""
        seen: list[KnobConfig] = []
        for t, k, b in itertools.product(
            (self.tiers[-1], self.tiers[0]), (self.top_k[-1], self.top_k[0]), (self.num_blocks[-1], self.num_blocks[0])
        ):
            cfg = KnobConfig(t, k, b)
            if cfg not in seen:
                seen.append(cfg)
        return seen

    def validate_for(self, *, num_experts: int, num_layers: int, tiers: Iterable[str], source: str = "the model"
                     ) -> None:
        """Raise a ParamsError naming the first value of the grid the model cannot run."""
        tiers = tuple(tiers)
        for t in self.tiers:
            require(t in tiers, "knobs.tiers", list(self.tiers), f"{source} defines only {', '.join(tiers)}")
        require(self.top_k[-1] <= num_experts, "knobs.top_k", list(self.top_k),
                f"{source} has only {num_experts} experts per MoE block")
        require(self.num_blocks[-1] <= num_layers, "knobs.num_blocks", list(self.num_blocks),
                f"{source} has only {num_layers} blocks")

    def describe(self) -> str:
        return describe_configs(self.configs())


def describe_configs(configs: Iterable[KnobConfig]) -> str:
    """A set of configurations in a few words: its size and the values of each knob."""
    configs = list(configs)
    tiers = [t for t in TIER_ORDER if any(k.tier == t for k in configs)]
    top_k = sorted({k.top_k for k in configs})
    blocks = sorted({k.num_blocks for k in configs})
    return f"{len(configs)} configurations: tiers {tiers}, top_k {top_k}, num_blocks {blocks}"


def check_configs_in_grid(configs: Iterable[KnobConfig], grid: KnobGrid, what: str, fix: str) -> None:
    """Raise a ParamsError naming both grids unless every configuration of ``what`` is in ``grid``."""
    configs = list(configs)
    outside = [k for k in configs if k not in set(grid.configs())]
    if outside:
        raise ParamsError(f"{what} holds configurations outside params.yaml's knobs grid (first: {outside[0].label}); "
                          f"it has {describe_configs(configs)}, knobs has {grid.describe()}. {fix}")
