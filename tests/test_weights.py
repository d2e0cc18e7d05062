"""Weights with NaN or infinity are never saved: the previous artifact stays whole and the error names the tensor."""

from __future__ import annotations

import pytest
import torch

from knobctl.controller.policy import Controller
from knobctl.params import InputError
from knobctl.weights import NonFiniteWeights, check_finite
from tests.controller.test_policy import CFG


def test_check_finite_names_the_first_bad_tensor_and_counts_its_values():
    check_finite({"a": torch.zeros(3), "steps": torch.tensor([1, 2])}, "models/x", "fix")
    bad = {"a": torch.zeros(2), "b": torch.tensor([1.0, float("nan"), float("inf")]), "c": torch.full((2,), torch.nan)}
    with pytest.raises(NonFiniteWeights, match=r"models/x: .* in 2 of 3 tensors \(first: b, 2 of 3 values.*Lower it"):
        check_finite(bad, "models/x", "Lower it.")
    assert issubclass(NonFiniteWeights, InputError)  # a stage prints it without a traceback, exit 2


def test_a_diverged_controller_is_not_saved_over_the_previous_one(tmp_path):
    good = Controller(CFG)
    good.save(tmp_path / "controller")
    before = {p.name: p.read_bytes() for p in (tmp_path / "controller").iterdir()}
    diverged = Controller(CFG)
    with torch.no_grad():
        next(diverged.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteWeights, match="train_controller.lr or the reward weights"):
        diverged.save(tmp_path / "controller")
    assert {p.name: p.read_bytes() for p in (tmp_path / "controller").iterdir()} == before


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "controller.safetensors").write_bytes((d / "controller.safetensors").read_bytes()[:100]),
     r"controller\.safetensors does not load"),
    (lambda d: (d / "controller.safetensors").write_bytes(b""), r"controller\.safetensors does not load"),
    (lambda d: (d / "controller.json").write_text("{not json"), r"controller\.json is not readable JSON"),
    (lambda d: (d / "controller.json").write_text("[1, 2]"), r"controller\.json holds a list, not a JSON object"),
])
def test_a_damaged_controller_is_named_on_load(tmp_path, damage, message):
    Controller(CFG).save(tmp_path / "ctrl")
    damage(tmp_path / "ctrl")
    with pytest.raises(InputError, match=rf"{message}.*dvc repro train_controller"):
        Controller.load(tmp_path / "ctrl")
