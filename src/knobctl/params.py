"""Reading params.yaml: one section per stage plus the shared ``seed``, ``knobs`` and ``model``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the stage from the repository root or pass --params")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def section(params: dict[str, Any], name: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """A stage's own section; an absent section means all defaults."""
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: section {name!r} must be a mapping, got {value!r}")
    return value


def seed_of(params: dict[str, Any], path: str | Path = "params.yaml") -> int:
    seed = params.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{path}: seed must be a non-negative integer, got {seed!r}")
    return seed


def require_int(value: Any, name: str, minimum: int = 1) -> None:
    """A params value that must be an integer (not a bool) of at least ``minimum``; name it if not."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; it must be an integer >= {minimum}")


def check_keys(values: Any, allowed: Any, name: str) -> None:
    """Reject keys of a params section that nothing reads (a typo would otherwise be silently ignored)."""
    unknown = set(values) - set(allowed)
    if unknown:
        raise ValueError(f"{name}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


def dataclass_from_section(cls: type[T], values: Mapping[str, Any], name: str, tuples: Sequence[str] = ()) -> T:
    """A params dataclass from its section: unknown keys rejected, YAML lists in ``tuples`` frozen
    into tuples (None stays None), everything else passed as is."""
    check_keys(values, cls.__dataclass_fields__, name)
    out = dict(values)
    for key in tuples:
        if out.get(key) is not None:
            out[key] = tuple(out[key])
    return cls(**out)


def apply_overrides(values: dict[str, Any], pairs: list[str], name: str) -> dict[str, Any]:
    """``key=value`` command-line overrides (values parsed as YAML) on top of a params section."""
    out = dict(values)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: write KEY=VALUE, e.g. rounds=3 (a key of {name})")
        out[key] = yaml.safe_load(raw)
    return out
