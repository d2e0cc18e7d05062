"""Block importance: an exact-identity block costs exactly nothing, rankings and ties, the stage end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from knobctl.base.evaluation import evaluate
from knobctl.base.importance import (
    BlockFigures,
    ImportanceParams,
    headline,
    measure_importance,
    rank_blocks,
    reference_answer,
    spearman,
)
from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.decoding import teacher_forced
from knobctl.model.presets import EOS
from knobctl.model.runtime import save_runtime
from knobctl.params import ParamsError
from knobctl.vqa.sources import decode_images
from tests.conftest import ROOT, make_runtime, vqa_frame

GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(13, 16))
IDENTITY = 6  # the block made an exact identity


def identity_runtime():
    """A tiny runtime whose block IDENTITY adds zero to the residual stream: its attention output
    projection and every expert's down projection are zero, so its output is its input, bit for bit."""
    rt = make_runtime(seed=3)
    layer = rt._all_layers[IDENTITY]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.experts.down_proj.zero_()
    return rt


@pytest.fixture(scope="module")
def samples():
    return vqa_frame(10, seed=2)


@pytest.fixture(scope="module")
def by_kl(samples):
    """Measured with the full model's own greedy answers as references, so its accuracy is 1 and drops show."""
    rt = identity_runtime()
    images = torch.from_numpy(decode_images(samples["image"].tolist(), size=64))
    own = samples.assign(answers=[[a] for a in rt.answer(images, samples["question"].tolist(), GRID.full)])
    return rt, own, measure_importance(rt, own, GRID, ImportanceParams(num_samples=None, rank_by="kl", batch_size=4,
                                                                       device="cpu"), seed=0)


def test_an_identity_block_costs_exactly_nothing_and_ranks_last_by_kl(by_kl):
    _, _, r = by_kl
    fig = {p["block"]: p for p in r["per_block"]}
    assert sorted(fig) == list(range(16))
    assert abs(fig[IDENTITY]["loglik_drop"]) < 1e-6 and abs(fig[IDENTITY]["kl"]) < 1e-6
    assert r["full"]["accuracy"] == 1 and fig[IDENTITY]["accuracy"] == 1 and fig[0]["accuracy"] < 1
    assert all(fig[b]["kl"] > 1e-6 for b in fig if b != IDENTITY)  # a random block changes the answer distribution
    assert r["order"][0] == 0 and r["order"][-1] == IDENTITY and sorted(r["order"]) == list(range(16))
    # the ranking by KL is the per-block KL sorted (no ties among random blocks)
    assert r["order"][1:] == sorted(range(1, 16), key=lambda b: -fig[b]["kl"])
    assert r["n_samples"] == 10 and r["config"] == {"tier": "high", "top_k": 8, "num_blocks": 16}
    assert all(o[0] == 0 and sorted(o) == list(range(16)) for o in r["half_orders"])


def test_curve_drops_the_least_important_first_down_to_the_lowest_count(by_kl):
    _, _, r = by_kl
    curve = r["curve"]
    assert [c["num_blocks"] for c in curve] == [16, 15, 14, 13]
    assert [c["dropped"] for c in curve] == [[], [IDENTITY], sorted(r["order"][-2:]), sorted(r["order"][-3:])]
    assert curve[0]["accuracy"] == r["full"]["accuracy"] and curve[0]["loglik_drop"] == 0 and curve[0]["kl"] == 0
    # dropping the identity block is the full model: the same answers and likelihood
    assert curve[1]["accuracy_cost_pct"] == 0 and abs(curve[1]["loglik_drop"]) < 1e-6
    # the first policy at 15 blocks drops block 15, which is its own per-block figure
    block15 = next(p for p in r["per_block"] if p["block"] == 15)
    assert curve[1]["first_loglik"] == block15["loglik"] and curve[1]["first_accuracy"] == block15["accuracy"]
    h = headline(r)
    assert list(h) == ["full_accuracy", "block0_accuracy_cost_pct", "drop1_accuracy_cost_pct",
                       "drop2_accuracy_cost_pct", "drop3_accuracy_cost_pct", "drop3_likelihood_cost_pct",
                       "agreement_spearman"]
    assert -1 <= r["agreement_spearman"] <= 1


def test_full_figures_are_the_evaluation_accuracy_and_the_training_loss(by_kl):
    rt, samples, r = by_kl
    # dropping block 3 is 15 blocks of a policy ranking it last: the evaluation's accuracy there is its figure
    ranked = make_runtime(seed=3, block_order=[0, 1, 2, *range(4, 16), 3])
    ranked.model.load_state_dict(rt.model.state_dict())
    acc = evaluate(ranked, samples, [KnobConfig("high", 8, 15)], batch_size=4)["high/k8/b15"]["accuracy"]
    assert next(p for p in r["per_block"] if p["block"] == 3)["accuracy"] == acc
    assert 0 < acc < 1
    questions = rt.tokenizer(samples["question"].tolist(), add_special_tokens=False)["input_ids"]
    answers = rt.tokenizer([a[0] for a in samples["answers"]], add_special_tokens=False)["input_ids"]
    with torch.no_grad(), rt.knobs_applied(GRID.full):
        visual = rt.encode_images(torch.from_numpy(decode_images(samples["image"].tolist(), size=64)), "high")
        logits, labels = teacher_forced(rt, visual, questions, [a + [rt.ids[EOS]] for a in answers])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert r["full"]["loglik"] == pytest.approx(-loss.item(), abs=1e-5)
    assert r["answer_tokens"] == int((labels >= 0).sum())


def fig(block, acc=0.0, ll=0.0, kl=0.0):
    return BlockFigures(block=block, accuracy=1 - acc, accuracy_drop=acc, loglik=-ll, loglik_drop=ll, kl=kl)


def test_rank_puts_block0_first_then_the_largest_drop_and_breaks_ties_by_loglik_then_index():
    blocks = [fig(0, acc=0.0, ll=0.0, kl=0.0), fig(1, acc=0.1, ll=0.2, kl=0.05), fig(2, acc=0.1, ll=0.3, kl=0.01),
              fig(3, acc=0.3, ll=0.1, kl=0.02), fig(4, acc=0.1, ll=0.2, kl=0.05)]
    assert rank_blocks(blocks, "loglik") == (0, 2, 1, 4, 3)  # 1 and 4 tie on loglik: lower index first
    assert rank_blocks(blocks, "kl") == (0, 1, 4, 3, 2)  # 1 and 4 tie on kl and loglik
    assert rank_blocks(blocks, "accuracy") == (0, 3, 2, 1, 4)  # 1, 2, 4 tie on accuracy: loglik, then index
    negative = [fig(0), fig(1, ll=-0.01), fig(2, ll=0.0)]  # dropping block 1 helps: least important
    assert rank_blocks(negative, "loglik") == (0, 2, 1)
    with pytest.raises(ParamsError, match="rank_by='ppl'"):
        rank_blocks(blocks, "ppl")


def test_spearman_over_the_blocks_after_block0():
    assert spearman([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == 1.0
    assert spearman([0, 1, 2, 3, 4], [0, 4, 3, 2, 1]) == -1.0
    assert spearman([0, 1, 2, 3], [0, 2, 1, 3]) == pytest.approx(0.5)  # d^2 = 2: 1 - 12 / 24
    assert spearman([0, 1], [0, 1]) is None


def test_reference_answer_is_the_most_frequent_then_the_first():
    assert reference_answer(["two", "2", "2", "two", "three"]) == "two"
    assert reference_answer(["no", "yes", "yes"]) == "yes"


@pytest.mark.parametrize(("values", "message"), [
    ({"split": "test"}, "block_importance.split='test': allowed: train, val"),
    ({"rank_by": "ppl"}, "block_importance.rank_by='ppl': allowed: loglik, kl, accuracy"),
    ({"num_samples": 1}, "block_importance.num_samples=1: use an integer >= 2"),
])
def test_bad_params_are_named(values, message):
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImportanceParams.from_params(values)


def test_the_stage_writes_the_order_that_load_runtime_takes(tmp_path, samples):
    """The stage on a saved tiny checkpoint, a VQA split and tiny params; its output is a block_order."""
    rt = identity_runtime()
    save_runtime(rt, tmp_path / "model")
    (tmp_path / "vqa").mkdir()
    samples.to_parquet(tmp_path / "vqa/train.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["knobs"] = {"tiers": ["low", "high"], "top_k": [4, 8], "num_blocks": [14, 16]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, metrics = tmp_path / "out/importance.json", tmp_path / "m.json"
    proc = subprocess.run([sys.executable, str(ROOT / "stages/block_importance.py"), "--params",
                           str(tmp_path / "params.yaml"), "--data", str(tmp_path / "vqa"), "--out", str(out),
                           "--metrics", str(metrics), "--set", f"source={tmp_path / 'model'}", "num_samples=8",
                           "batch_size=8", "rank_by=kl", "num_threads=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("block_importance: 8 samples in ")
    r = json.loads(out.read_text())
    assert r["order"][0] == 0 and r["order"][-1] == IDENTITY and r["rank_by"] == "kl" and r["n_samples"] == 8
    assert {"per_block", "full", "curve", "agreement_spearman", "provenance"} <= set(r)
    assert r["provenance"]["model"] == str(tmp_path / "model") and "timestamp" not in r["provenance"]
    m = json.loads(metrics.read_text())
    assert list(m) == ["headline"] and "drop2_accuracy_cost_pct" in m["headline"]
    loaded = make_runtime(block_order=str(out))
    assert loaded.spec.block_order == tuple(r["order"])
    assert loaded.spec.blocks_for(15, 16) == sorted(r["order"][:15]) and IDENTITY not in loaded.spec.blocks_for(15, 16)
