"""Timing harness, interleaving, error rows, resume, summary and the stage's metadata."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from knobctl.io import read_provenance
from knobctl.knobs import KnobConfig
from knobctl.latency.profiling import (
    Case,
    ProfileParams,
    RuntimeMeasurer,
    cases_for,
    schedule,
)
from knobctl.latency.request import request_ms
from knobctl.model.decoding import generate
from knobctl.model.presets import EOS
from knobctl.model.timing import Stopwatch

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [KnobConfig(t, k, b) for t in ("low", "high") for k in (4, 8) for b in (12, 16)]


class FakeClock:
    """Returns the given instants in order and counts device syncs."""

    def __init__(self, instants):
        self.instants = iter(instants)
        self.syncs = 0

    def __call__(self) -> float:
        return next(self.instants)

    def sync(self) -> None:
        self.syncs += 1


def test_harness_splits_vision_prefill_and_decode_on_a_fake_clock(tiny_rt):
    clock = FakeClock([10.000, 10.002, 10.010, 10.040])  # vision 2 ms, prefill 8 ms, 3 decode steps in 30 ms
    m = RuntimeMeasurer(tiny_rt, batch_size=1, image_size=64, seed=0, watch=Stopwatch(clock=clock, sync=clock.sync))
    t = m(Case(KnobConfig("high", 8, 16), text_tokens=5, output_tokens=4))
    assert t.vision_ms == pytest.approx(2.0) and t.prefill_ms == pytest.approx(8.0)
    assert t.decode_ms_per_token == pytest.approx(10.0)
    assert clock.syncs == 4  # every mark waits for the device first
    assert request_ms(t.vision_ms, t.prefill_ms, t.decode_ms_per_token, 4) == pytest.approx(40.0)


def test_single_token_has_no_decode_step(tiny_rt):
    clock = FakeClock([0.0, 0.001, 0.003, 0.003])
    m = RuntimeMeasurer(tiny_rt, 1, 64, 0, Stopwatch(clock=clock))
    t = m(Case(KnobConfig("low", 4, 12), 3, 1))
    assert math.isnan(t.decode_ms_per_token)
    assert request_ms(t.vision_ms, t.prefill_ms, t.decode_ms_per_token, 1) == pytest.approx(3.0)


def test_forced_output_length_bans_eos(tiny_rt, images):
    eos = tiny_rt.ids[EOS]
    handle = tiny_rt.model.lm_head.register_forward_hook(lambda mod, inp, out: out.index_add(
        -1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 1e4)))
    try:
        with tiny_rt.knobs_applied(KnobConfig("high", 8, 16)):
            visual = tiny_rt.encode_images(images[:2], "high")
            inputs = tiny_rt.embed(visual, tiny_rt.prompt_ids(["what color", "is it red"], visual.num_tokens))
            free = generate(tiny_rt, inputs, 5)
            forced = generate(tiny_rt, inputs, 5, min_new_tokens=5)
    finally:
        handle.remove()
    assert free.shape == (2, 1) and (free == eos).all()  # the hook makes EOS win at once
    assert forced.shape == (2, 5) and not (forced == eos).any()


def test_measurer_prompt_has_exact_lengths(tiny_rt):
    m = RuntimeMeasurer(tiny_rt, batch_size=3, image_size=32, seed=1)
    prompt = m.prompt(7, tiny_rt.visual_tokens("medium"))
    assert len(prompt) == 3 and all(len(p) == m.input_tokens(Case(KnobConfig("medium", 4, 12), 7, 2)) for p in prompt)
    assert m.question_ids(7) == RuntimeMeasurer(tiny_rt, 3, 32, seed=1).question_ids(7)  # seeded
    other = RuntimeMeasurer(tiny_rt, 3, 32, seed=1)
    other.question_ids(4)
    assert other.question_ids(7) == m.question_ids(7)  # not drawn in the order lengths were asked for
    assert RuntimeMeasurer(tiny_rt, 3, 32, seed=2).question_ids(7) != m.question_ids(7)


def test_schedule_interleaves_every_case_once_per_round():
    cases = cases_for(CONFIGS, [4, 8], [2])
    sched = schedule(cases, rounds=3, seed=5)
    assert len(sched) == 3 * len(cases)
    orders = []
    for r in range(3):
        in_round = [c.key for rr, _, c in sched if rr == r]
        assert sorted(in_round) == sorted(c.key for c in cases)
        orders.append(in_round)
    assert orders[0] != orders[1] != orders[2]  # shuffled afresh each round
    assert sched == schedule(cases, rounds=3, seed=5)
    assert [c.key for _, _, c in schedule(cases, 1, 5, stream=1)] != orders[0]  # warm-up order differs


@pytest.mark.parametrize("bad, word", [
    ({"rounds": 0}, "rounds"), ({"text_tokens": []}, "text_tokens"), ({"output_tokens": [2, 2]}, "repeats"),
    ({"dtype": "fp8"}, "dtype"), ({"experts_implementation": "triton"}, "experts_implementation"),
    ({"repeats": 3}, "unknown keys"),
])
def test_bad_params_name_the_key(bad, word):
    with pytest.raises(ValueError, match=word):
        ProfileParams.from_params(bad)


def test_stage_writes_rows_summary_and_provenance(tmp_path):
    params = {
        "seed": 3,
        "knobs": {"tiers": ["low", "high"], "top_k": [4, 8], "num_blocks": [12, 16]},
        "profile_latency": {"source": "tiny", "device": "cpu", "text_tokens": [3, 6], "output_tokens": [1, 3],
                            "rounds": 2, "warmup_rounds": 0, "flush_every": 7},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, str(ROOT / "stages/profile_latency.py"), "--params", "params.yaml"],
                   cwd=tmp_path, check=True, capture_output=True, text=True, timeout=300)
    rows = pd.read_parquet(tmp_path / "data/profile/latency.parquet")
    assert len(rows) == 8 * 2 * 2 * 2 and rows["error"].isna().all()
    assert set(itertools.product(rows["round"].unique(), [1, 3])) == set(zip(rows["round"], rows["output_tokens"]))
    assert rows.loc[rows["output_tokens"] == 1, "decode_ms_per_token"].isna().all()
    assert (rows.loc[rows["output_tokens"] == 3, "decode_ms_per_token"] > 0).all()
    summary = pd.read_parquet(tmp_path / "data/profile/summary.parquet")
    assert len(summary) == 8 * 2 * 2 and (summary["repeats"] == 2).all()
    meta = read_provenance(tmp_path / "data/profile/latency.parquet")
    for key in ("device", "dtype", "torch", "transformers", "model_hash", "git_commit", "params_hash", "timestamp",
                "experts_implementation", "tiers"):
        assert key in meta, key
    assert meta["model_hash"] == "preset:tiny" and meta["dtype"] == "float32" and meta["tiers"]["high"]["visual_tokens"] > 1
    high = meta["tiers"]["high"]
    assert high["prompt_tokens"] == high["visual_tokens"] + 2  # [BOS] <image> x T ... [SEP]
    assert (rows["input_tokens"] == rows["tier"].map({t: v["prompt_tokens"] for t, v in meta["tiers"].items()})
            + rows["text_tokens"]).all()
    assert not any((tmp_path / ".knobctl_cache/profile").iterdir())  # parts removed once merged
