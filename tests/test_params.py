"""params.yaml helpers: sections, unknown keys, command-line overrides."""

from __future__ import annotations

import pytest

from knobctl.params import apply_overrides, check_keys, section


def test_overrides_parse_yaml_values_without_touching_the_section():
    own = {"rounds": 5, "dtype": "float32"}
    out = apply_overrides(own, ["rounds=3", "text_tokens=[4, 8]", "experts_implementation=null"], "profile_latency")
    assert out == {"rounds": 3, "dtype": "float32", "text_tokens": [4, 8], "experts_implementation": None}
    assert own == {"rounds": 5, "dtype": "float32"}


def test_override_without_equals_names_the_fix():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["rounds"], "profile_latency")


def test_unknown_keys_are_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"knobs: unknown keys \['topk'\]; allowed: \['num_blocks', 'tiers', 'top_k'\]"):
        check_keys({"topk": [4]}, ("tiers", "top_k", "num_blocks"), "knobs")
    check_keys({"tiers": ["low"]}, ("tiers", "top_k", "num_blocks"), "knobs")


def test_section_must_be_a_mapping():
    assert section({"a": None}, "a") == {}
    with pytest.raises(ValueError, match="must be a mapping"):
        section({"a": [1]}, "a")


def test_require_int_rejects_bools_floats_and_small_values():
    from knobctl.params import require_int

    require_int(3, "profile_latency.rounds")
    require_int(0, "profile_latency.warmup_rounds", 0)
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ValueError, match=r"profile_latency\.rounds=.*it must be an integer >= 1"):
            require_int(bad, "profile_latency.rounds")


def test_dataclass_from_section_freezes_lists_and_rejects_unknown_keys():
    from dataclasses import dataclass

    from knobctl.params import dataclass_from_section

    @dataclass(frozen=True)
    class P:
        sizes: tuple[int, ...] | None = None
        name: str = "x"

    assert dataclass_from_section(P, {"sizes": [1, 2]}, "s", tuples=("sizes",)) == P(sizes=(1, 2))
    assert dataclass_from_section(P, {"sizes": None, "name": "y"}, "s", tuples=("sizes",)) == P(None, "y")
    assert dataclass_from_section(P, {"sizes": [1]}, "s").sizes == [1]  # only the named keys are frozen
    with pytest.raises(ValueError, match=r"s: unknown keys \['size'\]"):
        dataclass_from_section(P, {"size": [1]}, "s")
