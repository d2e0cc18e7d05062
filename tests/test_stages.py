"""Stage scripts as a user runs them: the checkout's own library, clean errors for bad params and for inputs of
another knob grid (before any work), and DVC's lock against two runs at once."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from knobctl.controller.policy import Controller, ControllerConfig
from tests.conftest import ROOT


def stage(repo: Path, name: str, *args: str, params: Path | None = None, env: dict | None = None
          ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(repo / "stages" / f"{name}.py"), *(["--params", str(params)] if params else []), *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, **(env or {})})


def params_with(repo: Path, tmp_path: Path, **sections: dict) -> Path:
    """The repository's params.yaml with some sections' keys replaced, as a new file."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, values in sections.items():
        params[name] = {**params[name], **values} if values is not None else None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_a_stage_runs_the_library_of_its_own_checkout(tmp_path):
    """With the installed package (here: PYTHONPATH) pointing at another copy, as in a worktree, `dvc exp run --temp`
    or `dvc queue`, a stage must still import the library beside it."""
    copy = tmp_path / "copy"
    for folder in ("stages", "src"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    with (copy / "src/knobctl/params.py").open("a") as f:
        f.write("\nprint('LIBRARY', __file__)\n")
    proc = stage(copy, "fit_estimator", params=tmp_path / "missing.yaml", env={"PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and f"LIBRARY {copy / 'src/knobctl/params.py'}" in proc.stdout, proc.stdout + proc.stderr


def sections_read(script: Path) -> set[str]:
    """The params sections a stage script reads: ``section(params, NAME)``, ``params.get(NAME)``, ``params[NAME]``,
    and ``seed`` through ``seed_of``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name == "seed_of":
                found.add("seed")
            elif name in ("section", "params.get") and len(node.args) >= 1 + (name == "section"):
                arg = node.args[1 if name == "section" else 0]
                found |= {arg.value} if isinstance(arg, ast.Constant) else {"<computed>"}
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "params":
            found.add(node.slice.value if isinstance(node.slice, ast.Constant) else "<computed>")
    return found


def test_each_stage_reads_only_the_params_sections_dvc_yaml_lists_for_it():
    stages_ = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage_ in stages_.items():
        declared = {key.split(".")[0] for key in stage_.get("params", [])}
        read = sections_read(ROOT / stage_["cmd"].split()[-1])
        assert read <= declared, f"{name} reads params sections {sorted(read - declared)} dvc.yaml does not list"
        assert name in read or name in ("report",), f"{name} does not read its own section"
    # where a stage's library reads a few keys of the model section, dvc.yaml lists exactly those
    from knobctl.latency.profile_stage import MODEL_KEYS as PROFILE_KEYS
    from knobctl.table.build import MODEL_KEYS as TABLE_KEYS
    from knobctl.validate.run import MODEL_KEYS as VALIDATE_KEYS

    for name, keys in (("accuracy_table", TABLE_KEYS), ("validate", VALIDATE_KEYS), ("profile_latency", PROFILE_KEYS)):
        assert {k for k in stages_[name]["params"] if k.startswith("model.")} == {f"model.{k}" for k in keys}, name


def test_params_file_errors_end_a_stage_with_the_message_alone(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text() + "\ntrain_contoller: {steps: 3}\n")
    proc = stage(ROOT, "train_controller", params=bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train_controller: error:" in proc.stderr and "unknown top-level keys ['train_contoller']" in proc.stderr
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["train_base"]
    bad.write_text(yaml.safe_dump(params))
    proc = stage(ROOT, "train_base", params=bad)
    assert proc.returncode == 2 and "has no 'train_base' section" in proc.stderr
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval_base"]["batch_size"] = "abc"
    bad.write_text(yaml.safe_dump(params))
    proc = stage(ROOT, "eval_base", params=bad)
    assert proc.returncode == 2 and "eval_base.batch_size='abc': expected an integer" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("name", "knobs", "message"), [
    ("profile_latency", {"num_blocks": [12, 17]}, "knobs.num_blocks=[12, 17]: models/base has only 16 blocks"),
    ("accuracy_table", {"top_k": [4, 9]}, "knobs.top_k=[4, 9]: models/base has only 8 experts per MoE block"),
    ("eval_base", {"num_blocks": [12, 17]}, "knobs.num_blocks=[12, 17]: models/base has only 16 blocks"),
])
def test_a_grid_the_model_cannot_run_is_refused_before_any_work(repo, tmp_path, name, knobs, message):
    out = tmp_path / "out"
    proc = stage(repo, name, "--metrics", str(out / "m.json"), params=params_with(repo, tmp_path, knobs=knobs))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


@pytest.mark.slow
def test_train_controller_refuses_rollouts_of_another_grid(repo, tmp_path):
    proc = stage(repo, "train_controller", "--out", str(tmp_path / "ctrl"), "--metrics", str(tmp_path / "m.json"),
                 params=params_with(repo, tmp_path, knobs={"top_k": [4], "num_blocks": [12, 16]}))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data/rollouts holds configurations outside params.yaml's knobs grid (first: low/k8/b12)" in proc.stderr
    assert "12 configurations" in proc.stderr and "knobs has 6 configurations" in proc.stderr
    assert not (tmp_path / "ctrl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("controller_top_k", [(4,), (4, 6, 8)])
def test_validate_refuses_a_controller_of_another_grid_naming_both(repo, tmp_path, controller_top_k):
    ours = Controller.load(repo / "models/controller").config
    other = ControllerConfig(**{**ours.__dict__, "top_k": controller_top_k, "fit_mask": False, "fit_text_tokens": (0, 0)})
    Controller(other).save(tmp_path / "ctrl")
    proc = stage(repo, "validate", "--controller", str(tmp_path / "ctrl"), "--out", str(tmp_path / "out"),
                 "--metrics", str(tmp_path / "m.json"), params=params_with(repo, tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"chooses among {len(controller_top_k) * 6} configurations" in proc.stderr
    assert "knobs grid has 12 configurations: tiers ['low', 'medium', 'high'], top_k [4, 8]" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_repros_of_a_stage_at_once_the_second_stops_on_dvc_lock(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["fit_estimator"]["num_leaves"] = 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", "fit_estimator"]
    first = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    while "Running stage 'fit_estimator'" not in seen and first.poll() is None:  # it holds the repository lock
        seen += first.stdout.readline()
    second = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    rest, _ = first.communicate(timeout=600)
    assert first.returncode == 0, seen + rest
    # DVC's repository lock ("Unable to acquire lock") or its lock on the stage's outputs (".dvc/tmp/rwlock")
    said = second.stderr + second.stdout
    assert second.returncode != 0 and ("Unable to acquire lock" in said or ".dvc/tmp/rwlock" in said), said
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "fit_estimator"], cwd=repo, env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "fit_estimator" not in status.replace("'fit_estimator'", "")  # up to date: nothing was corrupted
    from knobctl.latency.estimator import LatencyEstimator

    assert LatencyEstimator.load(repo / "models/latency_estimator").spec["params"]["num_leaves"] == 5
