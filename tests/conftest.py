"""Shared fixtures: a tiny random model built from configs (never from a hub), and a copy of the repository with
the whole pipeline reproduced on tiny params."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from knobctl.model.presets import TinyDims
from knobctl.model.runtime import Runtime, load_runtime

# Small and fast: 8 px patches pooled 2x2 (the default's 4 px patches quadruple the vision tower's work)
TEST_DIMS = TinyDims(hidden_size=32, expert_intermediate=16, vision_hidden=32, vision_layers=1, vision_intermediate=64,
                     num_heads=2, vision_heads=2, patch_size=8, vision_pool=2)
VOCAB = ["what color is the shape ?", "is there a red circle in the image ?", "blue green triangle rectangle yes no"]


def make_runtime(experts: str = "eager", seed: int = 0, **kw) -> Runtime:
    torch.manual_seed(seed)
    rt = load_runtime("tiny", device="cpu", vocab=VOCAB, dims=TEST_DIMS, **kw)
    rt.model.config.text_config._experts_implementation = experts
    return rt


@pytest.fixture(scope="module")
def tiny_rt() -> Runtime:
    return make_runtime()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=g)


def vqa_frame(n: int, seed: int = 0):
    """``n`` easy-VQA-like rows (PNG images, questions in the test vocabulary), as prepare_data writes them."""
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    questions = ["what color is the shape ?", "is there a red circle in the image ?", "what is the shape ?",
                 "is there a blue triangle ?"]
    answers = [["blue"] * 10, ["yes"] * 10, ["triangle"] * 10, ["no"] * 10]
    types = ["color", "yes/no", "shape", "yes/no"]
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        q = int(rng.integers(len(questions)))
        rows.append({"sample_id": f"t/{i}", "image_id": f"img{i}", "image": buf.getvalue(), "question": questions[q],
                     "answers": answers[q], "question_type": types[q]})
    return pd.DataFrame(rows)


def rehash(folder: Path) -> None:
    """Write an artifact folder's manifest again over its files as they now are, keeping its facts: a damaged
    file then reaches the loader's own checks, behind the manifest's."""
    from knobctl.weights import MANIFEST, write_manifest

    facts = json.loads((folder / MANIFEST).read_text())
    facts.pop("files")
    write_manifest(folder, facts)


def validation_frames():
    """Two samples, two budgets (10, 20 ms); hand-made measured requests."""
    req = pd.DataFrame([
        # controller: sample a right at both budgets, over budget at 10 ms; sample b wrong at 10, right at 20
        {"sample_id": "a", "kind": "controller", "budget_ms": 10.0, "config": "low/k4/b12", "score": 1.0, "latency_ms": 12.0,
             "controller_ms": 1.0, "estimated_ms": 10.0, "controller_budget_ms": 9.0},
        {"sample_id": "a", "kind": "controller", "budget_ms": 20.0, "config": "high/k4/b12", "score": 1.0, "latency_ms": 19.0,
             "controller_ms": 1.0, "estimated_ms": 20.0, "controller_budget_ms": 19.0},
        {"sample_id": "b", "kind": "controller", "budget_ms": 10.0, "config": "low/k4/b12", "score": 0.0, "latency_ms": 9.0,
             "controller_ms": 1.0, "estimated_ms": 10.0, "controller_budget_ms": 9.0},
        {"sample_id": "b", "kind": "controller", "budget_ms": 20.0, "config": "high/k4/b12", "score": 1.0, "latency_ms": 18.0,
             "controller_ms": 1.0, "estimated_ms": 20.0, "controller_budget_ms": 19.0},
        # fixed configurations, measured once per sample
        {"sample_id": "a", "kind": "fixed", "config": "low/k4/b12", "score": 1.0, "latency_ms": 8.0, "estimated_ms": 10.0},
        {"sample_id": "a", "kind": "fixed", "config": "high/k8/b16", "score": 1.0, "latency_ms": 25.0, "estimated_ms": 23.0},
        {"sample_id": "b", "kind": "fixed", "config": "low/k4/b12", "score": 0.0, "latency_ms": 8.0, "estimated_ms": 10.0},
        {"sample_id": "b", "kind": "fixed", "config": "high/k8/b16", "score": 1.0, "latency_ms": 24.0, "estimated_ms": 23.0},
    ]).assign(budget_ms=lambda d: d["budget_ms"].where(d["kind"] == "controller"),
              controller_ms=lambda d: d["controller_ms"].fillna(0.0))
    req["rollout_score"] = req["score"]
    req.loc[6, "rollout_score"] = 1.0  # b's fixed low/k4/b12 answered differently in its test rollout
    rows = []
    for s in ("a", "b"):
        for b in (10.0, 20.0):
            rows += [{"sample_id": s, "method": "static", "budget_ms": b, "config": "low/k4/b12"},
                     {"sample_id": s, "method": "full", "budget_ms": b, "config": "high/k8/b16"},
                     {"sample_id": s, "method": "smallest", "budget_ms": b, "config": "low/k4/b12"},
                     {"sample_id": s, "method": "random", "budget_ms": b, "config": "low/k4/b12"},
                     {"sample_id": s, "method": "probe", "budget_ms": b,
                          "config": "high/k8/b16" if b == 20.0 else "low/k4/b12"},
                     {"sample_id": s, "method": "oracle", "budget_ms": b,
                          "config": "high/k8/b16" if (s, b) == ("b", 20.0) else "low/k4/b12"},
                     {"sample_id": s, "method": "lookup", "budget_ms": b,
                          "config": "high/k8/b16" if b == 20.0 else "low/k4/b12"}]
    # some configurations fit at 10 ms (a choice exists), all of them at 20
    return req, pd.DataFrame(rows).assign(fit_share=lambda d: np.where(d["budget_ms"] == 10.0, 0.5, 1.0))


ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "knobs": {"top_k": [4, 8], "num_blocks": [12, 16]},
    "profile_latency": {"text_tokens": [3, 6, 9], "output_tokens": [2, 3], "rounds": 2, "warmup_rounds": 0},
    "accuracy_table": {"num_samples": 5, "part_size": 2, "batch_size": 2},
    "block_importance": {"num_samples": 6, "batch_size": 6},
    "tradeoff": {"num_budgets": 3, "eval_fraction": 0.4},
    "train_controller": {"steps": 20, "batch_size": 8, "group_size": 4, "log_every": 5, "eval_budgets": 3,
                         "eval_fraction": 0.4},
    "validate": {"num_samples": 3, "num_budgets": 3, "warmup_requests": 1, "calibration_requests": 3, "batch_size": 3},
    "prepare_data": {"max_train_images": 24, "max_test_images": 6, "val_fraction": 0.25},
    "train_base": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "eval_batch_size": 64,
                   "vision_warmstart_steps": 3},
    "model": {"dims": {"hidden_size": 32, "expert_intermediate": 16, "vision_hidden": 32, "vision_layers": 1,
                       "vision_intermediate": 64, "num_heads": 2, "vision_heads": 2, "patch_size": 8, "vision_pool": 2}},
}


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no PYTHONPATH: each stage puts its own checkout first
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def copy_repo(dst: Path, overlay: dict | None = None) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no data, models, metrics, plots or reports)
    in ``dst``, with ``overlay`` (default: the tiny params) merged into params.yaml and a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    for rel in listed:
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("data/", "models/", "metrics/", "plots/", "reports/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for name, values in (TINY if overlay is None else overlay).items():
        params[name] = {**params[name], **values}
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], dst)
    return dst


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    """A copy of the repository with every stage reproduced on the tiny params (shared by the end-to-end tests)."""
    dst = copy_repo(tmp_path_factory.mktemp("repo"))
    run([sys.executable, "-m", "dvc", "repro"], dst)
    return dst


def kill_once(pids: list[int], killed: list[int]):
    """A callback that SIGKILLs ``pids`` the first time it is called (they go into ``killed``), for a Ray
    executor's ``on_part`` / ``on_round``: the workers die while others' jobs are in flight."""
    def hook(_: int) -> None:
        if not killed:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    return hook
