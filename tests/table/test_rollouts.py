"""Cached rollouts: shared work gives exactly rt.answer's answers; params, errors, lengths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.model.features import decision_states, vision_features
from knobctl.model.presets import EOS
from knobctl.table.rollouts import (
    RolloutParams,
    output_lengths,
    plan_chains,
    rollout_batch,
    rollout_part,
    run_isolated,
    select_configs,
    shared_prefix,
)
from knobctl.vqa.sources import decode_images, select_samples
from tests.conftest import make_runtime, vqa_frame

GRID = KnobGrid(tiers=("low", "high"), top_k=(4, 8), num_blocks=(12, 14, 16))


@pytest.fixture(scope="module")
def frame():
    return vqa_frame(7)


def test_params_are_validated_with_the_fix_in_the_message():
    assert RolloutParams.from_params({"configs": ["high/k8/b16"]}).configs == ("high/k8/b16",)
    with pytest.raises(ValueError, match=r"accuracy_table: unknown keys \['samples'\]"):
        RolloutParams.from_params({"samples": 10})
    with pytest.raises(ValueError, match="accuracy_table.part_size=0"):
        RolloutParams.from_params({"part_size": 0})
    with pytest.raises(ValueError, match="accuracy_table.split='dev': allowed: train, val, test"):
        RolloutParams.from_params({"split": "dev"})
    with pytest.raises(ValueError, match="accuracy_table.dtype='fp8'"):
        RolloutParams.from_params({"dtype": "fp8"})


def test_select_configs_and_samples():
    assert len(select_configs(GRID, None)) == 12
    picked = select_configs(GRID, ["high/k8/b16", "low/k4/b12"])
    assert [k.label for k in picked] == ["low/k4/b12", "high/k8/b16"]  # grid order
    with pytest.raises(ValueError, match="'high/k9/b16', which is not in the knobs grid"):
        select_configs(GRID, ["high/k9/b16"])
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(20)]})
    a, b = select_samples(df, 8, seed=3), select_samples(df, 8, seed=3)
    assert a.equals(b) and len(a) == 8 and a["sample_id"].map(lambda s: int(s[1:])).is_monotonic_increasing
    assert not a.equals(select_samples(df, 8, seed=4))
    assert len(select_samples(df, None, seed=0)) == 20
    with pytest.raises(ValueError, match="num_samples=30 but the val split has 20"):
        select_samples(df, 30, seed=0)


def test_block_counts_share_a_prefill_only_when_their_blocks_are_a_prefix():
    assert plan_chains(make_runtime(), [14, 12, 16]) == [[12, 14, 16]]
    ranked = make_runtime(block_order=[0, 15, 1, 14, 2, 13, 3, 12, 4, 11, 5, 10, 6, 9, 7, 8])
    # blocks for 12 = sorted(first 12 ranked) is not the first 12 of the 16 blocks run for 16
    assert plan_chains(ranked, [12, 16]) == [[16], [12]]


def test_counts_off_the_prefix_branch_from_the_shared_blocks_with_the_answers_of_rt_answer(frame):
    """A ranked order whose counts are not prefixes of the deepest: the branches reuse the shared
    blocks' outputs and keys, and still answer exactly as a separate prefill does."""
    order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 11, 13, 14]  # 12 and 14 branch off after block 10
    rt = make_runtime(seed=4, block_order=order)
    assert plan_chains(rt, [12, 14, 16]) == [[16], [12], [14]]
    assert shared_prefix(rt.spec.blocks_for(16, 16), rt.spec.blocks_for(12, 16)) == 11
    images = torch.from_numpy(decode_images(frame["image"].tolist(), size=64))
    qids = rt.tokenizer(frame["question"].tolist(), add_special_tokens=False)["input_ids"]
    res = rollout_batch(rt, images, qids, GRID.configs(), max_new_tokens=4)
    for k in GRID.configs():
        assert rt.decode(res.tokens[k]) == rt.answer(images, frame["question"].tolist(), k), k.label
    # the branches do answer differently from the first-N early exit (else the test could not fail)
    first = make_runtime(seed=4)
    assert any(first.answer(images, frame["question"].tolist(), k) != rt.decode(res.tokens[k])
               for k in GRID.configs() if k.num_blocks < 16)


def test_output_lengths_count_tokens_up_to_eos():
    eos = 3
    tokens = torch.tensor([[5, 3, 0, 0], [5, 6, 7, 8], [3, 0, 0, 0]])
    assert output_lengths(tokens, eos).tolist() == [2, 4, 1]


def test_run_isolated_pins_the_error_on_the_sample_that_raises():
    def run(a, b):
        if a <= 2 < b:
            raise RuntimeError("sample 2 is broken")
        return list(range(a, b))

    pieces = run_isolated(run, 4)
    assert [(s, r) for s, r, _ in pieces] == [(0, [0]), (1, [1]), (2, None), (3, [3])]
    assert pieces[2][2] == "RuntimeError: sample 2 is broken"
    assert run_isolated(lambda a, b: "ok", 4) == [(0, "ok", None)]


def test_shared_work_gives_exactly_the_answers_of_rt_answer(tiny_rt, frame):
    """Every configuration of the batch, against rt.answer on the same batch."""
    images = torch.from_numpy(decode_images(frame["image"].tolist(), size=64))
    qids = tiny_rt.tokenizer(frame["question"].tolist(), add_special_tokens=False)["input_ids"]
    res = rollout_batch(tiny_rt, images, qids, GRID.configs(), max_new_tokens=4)
    for k in GRID.configs():
        assert tiny_rt.decode(res.tokens[k]) == tiny_rt.answer(images, frame["question"].tolist(), k), k.label
    # The cached vision feature is the features module's own, computed apart.
    visual = tiny_rt.encode_images(images, "high")
    inputs = tiny_rt.embed(visual, tiny_rt.prompt_ids(frame["question"].tolist(), visual.num_tokens))
    direct = vision_features(tiny_rt, decision_states(tiny_rt, inputs), inputs["input_ids"])
    torch.testing.assert_close(res.vision["high"], direct, rtol=0, atol=0)
    assert res.input_tokens["high"].tolist() == inputs["attention_mask"].sum(1).tolist()


def test_batched_table_equals_single_requests(tiny_rt, frame):
    """The table (batches of 4, left-padded) against rt.answer one request at a time."""
    rows, feats = rollout_part(tiny_rt, frame, GRID.configs(), RolloutParams(batch_size=4, max_new_tokens=4))
    assert len(rows) == 7 * 12 and rows["error"].isna().all()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(frame), size=4, replace=False):
        for k in [GRID.configs()[j] for j in rng.choice(12, size=4, replace=False)]:
            single = tiny_rt.answer(frame["image"].iloc[i : i + 1].tolist(), [frame["question"].iloc[i]], k,
                                    max_new_tokens=4)[0]
            row = rows[(rows["sample_id"] == frame["sample_id"].iloc[i]) & (rows["config"] == k.label)]
            assert row["prediction"].item() == single, (i, k.label)
    assert list(feats["sample_id"]) == list(frame["sample_id"]) and feats["language"].iloc[0].shape == (64,)


def test_rows_hold_scores_lengths_and_tokens(frame):
    rt = make_runtime(seed=2)
    rows, _ = rollout_part(rt, frame.head(3), [KnobConfig("low", 4, 12), KnobConfig("high", 8, 16)],
                           RolloutParams(batch_size=3, max_new_tokens=4))
    assert rows["config"].tolist() == ["low/k4/b12", "high/k8/b16"] * 3
    prompt = {"low": 1 + 1 + 1, "high": 1 + 16 + 1}  # BOS, visual tokens, SEP
    qlen = [len(q.split()) for q in frame["question"].head(3)]
    assert rows["input_tokens"].tolist() == [v for n in qlen for v in (prompt["low"] + n, prompt["high"] + n)]
    assert rows["output_tokens"].between(1, 4).all()
    from knobctl.vqa.metric import vqa_score

    expected = [vqa_score(p, list(a)) for p, a in zip(rows["prediction"], np.repeat(frame["answers"].head(3), 2))]
    assert rows["score"].tolist() == expected


def test_a_sample_that_raises_gets_error_rows_and_the_rest_goes_on(frame, monkeypatch):
    rt = make_runtime()
    poisoned = torch.from_numpy(decode_images([frame["image"].iloc[2]], size=64))[0]
    real = rt.encode_images

    def encode(images, tier):
        if any(torch.equal(im, poisoned) for im in images):
            raise RuntimeError("corrupt image")
        return real(images, tier)

    monkeypatch.setattr(rt, "encode_images", encode)
    configs = GRID.configs()[:3]
    rows, feats = rollout_part(rt, frame.head(4), configs, RolloutParams(batch_size=4, max_new_tokens=4))
    bad = rows["sample_id"] == frame["sample_id"].iloc[2]
    assert rows.loc[bad, "error"].eq("RuntimeError: corrupt image").all() and rows.loc[bad, "score"].isna().all()
    assert rows.loc[~bad, "error"].isna().all() and rows.loc[~bad, "prediction"].notna().all()
    assert len(rows) == 4 * 3 and np.isnan(feats["vision_low"].iloc[2]).all()
    monkeypatch.undo()
    ok = rt.answer(frame["image"].iloc[3:4].tolist(), [frame["question"].iloc[3]], configs[0], max_new_tokens=4)
    assert rows.loc[rows["sample_id"] == "t/3", "prediction"].iloc[0] == ok[0]
    assert rt.ids[EOS] >= 0
