"""The backend registry: every family and preset has a backend, both layouts implement the one interface, and
the stages' --help text names every family and preset."""

from __future__ import annotations

from knobctl.model.backends import BACKENDS
from knobctl.model.families import FAMILIES
from knobctl.model.family_layout import FamilyLayout, shape_layout
from knobctl.model.layout import ModelLayout
from knobctl.model.llava_layout import LlavaLayout
from knobctl.model.presets import PRESETS
from tests.conftest import make_runtime
from tests.model.test_families import qwen_config


def test_every_family_and_preset_names_a_registered_backend():
    assert {f.backend for f in FAMILIES.values()} | {p.backend for p in PRESETS.values()} <= set(BACKENDS)
    assert all(f.short_name for f in FAMILIES.values())


def test_both_layouts_implement_the_model_layout_interface():
    llava = make_runtime().layout
    family = shape_layout("tiny-qwen", qwen_config(), ("<|im_end|>", 249), {"low": 4, "high": 16})
    assert isinstance(llava, LlavaLayout) and isinstance(family, FamilyLayout)
    for layout in (llava, family):
        assert isinstance(layout, ModelLayout), type(layout).__name__
        assert [layout.visual_tokens(t) for t in layout.tiers] == sorted(layout.visual_tokens(t) for t in layout.tiers)
    assert family.tier_tokens == {"low": 4, "high": 16} and llava.tier_tokens is None
