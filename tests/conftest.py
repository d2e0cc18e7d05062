"""Shared fixtures: a tiny random model built from configs (never from a hub)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from knobctl.model.presets import TinyDims
from knobctl.model.runtime import Runtime, load_runtime

TEST_DIMS = TinyDims(hidden_size=32, expert_intermediate=16, vision_hidden=32, vision_layers=1, vision_intermediate=64, num_heads=2, vision_heads=2)
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
                     {"sample_id": s, "method": "oracle", "budget_ms": b,
                          "config": "high/k8/b16" if (s, b) == ("b", 20.0) else "low/k4/b12"}]
    return req, pd.DataFrame(rows)
