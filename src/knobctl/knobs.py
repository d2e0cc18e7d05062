"""The three inference-time knobs and the grid they span.

A :class:`KnobConfig` is one point of the grid: vision token tier, MoE top-k and
number of transformer blocks executed. The grid comes from the ``knobs:`` section
of params.yaml; validating it against a model's shape happens here so every stage
fails the same way, with a message naming the value and what is allowed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from knobctl.params import check_keys

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


def _int_list(name: str, values: Any) -> tuple[int, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"knobs.{name} must be a non-empty list of integers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"knobs.{name} holds {v!r}; every entry must be a positive integer")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"knobs.{name} has duplicates: {values!r}")
    return tuple(sorted(out))


@dataclass(frozen=True)
class KnobGrid:
    """The cartesian grid of tiers x top_k x num_blocks (75 configurations by default)."""

    tiers: tuple[str, ...] = TIER_ORDER
    top_k: tuple[int, ...] = (4, 5, 6, 7, 8)
    num_blocks: tuple[int, ...] = (12, 13, 14, 15, 16)

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> KnobGrid:
        """Build from the ``knobs:`` section of params.yaml, naming any bad key or value."""
        check_keys(section, ("tiers", "top_k", "num_blocks"), "knobs")
        tiers = section.get("tiers", list(TIER_ORDER))
        if not isinstance(tiers, Sequence) or isinstance(tiers, str) or not tiers:
            raise ValueError(f"knobs.tiers must be a non-empty list, got {tiers!r}")
        for t in tiers:
            if t not in TIER_ORDER:
                raise ValueError(f"knobs.tiers holds unknown tier {t!r}; allowed: {', '.join(TIER_ORDER)}")
        ordered = tuple(t for t in TIER_ORDER if t in tiers)
        return cls(
            tiers=ordered,
            top_k=_int_list("top_k", section.get("top_k", [4, 5, 6, 7, 8])),
            num_blocks=_int_list("num_blocks", section.get("num_blocks", [12, 13, 14, 15, 16])),
        )

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

    def validate_for(self, *, num_experts: int, num_layers: int, tiers: Iterable[str]) -> None:
        """Raise ValueError naming the first value of the grid the model cannot run."""
        tiers = tuple(tiers)
        for t in self.tiers:
            KnobConfig(t, self.top_k[0], self.num_blocks[0]).validate_for(
                num_experts=num_experts, num_layers=num_layers, tiers=tiers
            )
        if self.top_k[-1] > num_experts:
            raise ValueError(f"knobs.top_k holds {self.top_k[-1]}, but the model has only {num_experts} experts")
        if self.num_blocks[-1] > num_layers:
            raise ValueError(f"knobs.num_blocks holds {self.num_blocks[-1]}, but the model has only {num_layers} blocks")
