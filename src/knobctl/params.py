"""Reading params.yaml: one section per stage plus the shared ``seed``, ``knobs`` and ``model``.

Every section is read one way: :func:`build` turns the section's mapping into its frozen params
dataclass. The builder rejects keys the dataclass does not have, converts each value to its
field's annotated type (a YAML list becomes a tuple; a number PyYAML left as a string because it
is written in exponent form, ``1e-4``, becomes a float; NaN and infinity are refused wherever a
number is expected) and names the section, key, value and
what is allowed when a value does not fit. Range checks live in each dataclass's
``__post_init__``, so building the class directly validates too. Defaults in code equal
params.yaml (a test holds them equal).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

#: Top-level keys of params.yaml: the shared ones, then one section per stage.
SECTIONS = ("seed", "knobs", "model", "prepare_data", "train_base", "eval_base", "block_importance",
            "profile_latency", "fit_estimator", "accuracy_table", "tradeoff", "reward", "train_controller", "validate")

# YAML 1.1 (PyYAML) reads 1e-4 and 3E5 as strings: a float needs a dot before the exponent there.
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class InputError(ValueError):
    """Bad input that the message names (a params value, a data file, an artifact): a stage prints it without a
    traceback (:func:`run_stage`)."""


class ParamsError(InputError):
    """A params value that is missing, unknown, of the wrong type or out of range; the message names the
    section, the key, the value and what is allowed."""


def run_stage(main: Callable[[], None], name: str | None = None) -> None:
    """Run a stage's ``main``; bad input (:class:`InputError`, a missing file) and a path the system refuses (an
    output folder that is a file, a full disk, no permission: the OS error names the path and the errno) end it
    with the message alone and exit status 2, while anything else keeps its traceback (a bug to report). Stages
    write their outputs as one set (:func:`knobctl.io.output_set`), so a refused path leaves the previous
    outputs whole."""
    try:
        main()
    except (InputError, OSError) as exc:
        stage = name or Path(sys.argv[0]).stem
        print(f"{stage}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def fail(where: str, value: Any, allowed: str) -> ParamsError:
    """The error for ``where`` (``section.key``) holding ``value``: ``allowed`` says what would do."""
    return ParamsError(f"{where}={value!r}: {allowed}")


def require(ok: bool, where: str, value: Any, allowed: str) -> None:
    """Raise :func:`fail`'s error unless ``ok``."""
    if not ok:
        raise fail(where, value, allowed)


def require_int(value: Any, name: str, minimum: int = 1) -> None:
    """A params value that must be an integer (not a bool) of at least ``minimum``; name it if not."""
    require(not isinstance(value, bool) and isinstance(value, int) and value >= minimum, name, value,
            f"use an integer >= {minimum}")


def require_choice(value: Any, name: str, allowed: Sequence[Any]) -> None:
    require(value in allowed, name, value, f"allowed: {', '.join(map(str, allowed))}")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml as a dict; a top-level key that is not a known section is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the stage from the repository root or pass --params")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"{path}: unknown top-level keys {unknown}; the sections are {', '.join(SECTIONS)}")
    return data


def section(params: Mapping[str, Any], name: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """A stage's own section; a missing one is an error (a misspelled section would otherwise run on defaults)."""
    if name not in params:
        raise ParamsError(f"{path} has no {name!r} section; add it (the repository's params.yaml lists every key "
                          "with its default)")
    value = params[name]
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"{path}: section {name!r} must be a mapping, got {value!r}")
    return value


def seed_of(params: Mapping[str, Any], path: str | Path = "params.yaml") -> int:
    if "seed" not in params:
        raise ParamsError(f"{path} has no 'seed'; add `seed: 0` (the one seed of the whole pipeline)")
    seed = params["seed"]
    require(not isinstance(seed, bool) and isinstance(seed, int) and seed >= 0, "seed", seed,
            "use a non-negative integer")
    return seed


def check_keys(values: Any, allowed: Any, name: str) -> None:
    """Reject keys of a params section that nothing reads (a typo would otherwise be silently ignored)."""
    unknown = set(values) - set(allowed)
    if unknown:
        raise ParamsError(f"{name}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")


def build(cls: type[T], values: Mapping[str, Any] | None, name: str) -> T:
    """The params dataclass ``cls`` from its section ``name`` (module docstring)."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ParamsError(f"{name} must be a mapping of keys to values, got {values!r}")
    if not dataclasses.is_dataclass(cls):  # a section whose keys come from a registry (the reward terms) reads itself
        return cls.from_params(values, name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(values, fields, name)
    hints = get_type_hints(cls)
    return cls(**{key: convert(value, hints[key], f"{name}.{key}") for key, value in values.items()})


def convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` as the annotated type ``tp``, or a :class:`ParamsError` naming ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own error says more than "expected X or null"
            return convert(value, options[0], where)
        for option in options:
            try:
                return convert(value, option, where)
            except ParamsError:
                continue
        raise fail(where, value, f"expected {describe(tp)}")
    if value is None:
        raise fail(where, value, f"expected {describe(tp)}, not null")
    if tp is bool:
        require(isinstance(value, bool), where, value, "write true or false")
        return value
    if tp is int:
        require(isinstance(value, int) and not isinstance(value, bool), where, value, "expected an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)
        require(isinstance(value, (int, float)) and not isinstance(value, bool), where, value, "expected a number")
        # NaN and infinity are never a setting: YAML's .nan / .inf (or 1e999) would reach training silently
        require(math.isfinite(value), where, value, "expected a finite number (not .nan or .inf)")
        return float(value)
    if tp is str:
        require(isinstance(value, str), where, value, "expected a string")
        return value
    if origin is tuple:
        require(isinstance(value, (list, tuple)), where, value, f"expected a list ({describe(tp)})")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        require(len(value) == len(args), where, value, f"expected a list of {len(args)} ({describe(tp)})")
        return tuple(convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        require(isinstance(value, Mapping), where, value, f"expected a mapping ({describe(tp)})")
        key_t, value_t = args or (Any, Any)
        return {convert(k, key_t, where): convert(v, value_t, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    return value


def describe(tp: Any) -> str:
    """A type annotation in the words of params.yaml."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        return f"a list of {describe(args[0])}" if args and args[-1] is Ellipsis else "a list"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(
        tp, "__name__", str(tp)))


def apply_overrides(values: Mapping[str, Any], pairs: Sequence[str], name: str) -> dict[str, Any]:
    """``key=value`` command-line overrides (values parsed as YAML) on top of a params section."""
    out = dict(values)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {pair!r}: write KEY=VALUE, e.g. rounds=3 (a key of {name})")
        out[key] = yaml.safe_load(raw)
    return out




def require_device(value: Any, name: str) -> None:
    """auto (cuda when present, else cpu), cpu, cuda or cuda:N."""
    require(isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None, name, value,
            "allowed: auto (cuda if present, else cpu), cpu, cuda, cuda:N")
