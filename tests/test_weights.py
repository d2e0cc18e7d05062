"""Weights with NaN or infinity are never saved: the previous artifact stays whole and the error names the tensor."""

from __future__ import annotations

import json

import pytest
import torch

from knobctl.controller.policy import Controller
from knobctl.params import InputError
from knobctl.weights import MANIFEST, ArtifactMismatch, NonFiniteWeights, check_finite
from tests.conftest import rehash
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
    with pytest.raises(ArtifactMismatch, match=rf"is not the file {MANIFEST} names.*dvc repro train_controller"):
        Controller.load(tmp_path / "ctrl")  # the manifest sees it first, before anything is parsed
    rehash(tmp_path / "ctrl")  # a manifest written over the damage: the loader's own checks still name it
    with pytest.raises(InputError, match=rf"{message}.*dvc repro train_controller"):
        Controller.load(tmp_path / "ctrl")


def test_a_controller_folder_must_match_its_manifest(tmp_path):
    folder = tmp_path / "ctrl"
    Controller(CFG).save(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) == {"controller.json", "controller.safetensors"}
    assert manifest["grid"] == {"tiers": list(CFG.tiers), "top_k": list(CFG.top_k), "num_blocks": list(CFG.num_blocks)}
    (folder / MANIFEST).write_text(json.dumps({**manifest, "grid": {**manifest["grid"], "top_k": [4]}}))
    with pytest.raises(ArtifactMismatch, match="another grid than its manifest records"):
        Controller.load(folder)
    (folder / "controller.json").unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="controller.json not found"):
        Controller.load(folder)
    Controller(CFG).save(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(ArtifactMismatch, match=f"has no {MANIFEST}.*dvc repro train_controller"):
        Controller.load(folder)
