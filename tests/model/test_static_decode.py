"""The decode paths (model.decode) give the eager path's greedy tokens: the static cache over the whole tiny grid,
torch.compile at its corners, forks of a shared prompt cache included; what a path cannot take falls back or is
refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from knobctl.knobs import KnobConfig
from knobctl.model.decoding import continue_greedy, generate, new_cache, next_token, prefill
from knobctl.model.runtime import load_runtime
from knobctl.model.static_decode import CACHE_BUCKET, StaticDecoder, cache_length, decoder_for
from knobctl.params import InputError
from knobctl.table.rollouts import rollout_batch
from tests.conftest import TEST_DIMS, VOCAB, make_runtime
from tests.model.test_families import picture
from tests.model.test_family_runtime import QUESTIONS as FAMILY_QUESTIONS
from tests.model.test_family_runtime import TIERS as FAMILY_TIERS
from tests.model.test_family_runtime import save_hub_checkpoint

QUESTIONS = ["what color is the shape ?", "is there a red circle in the image ?", "what is the shape ?",
             "is there a blue triangle ?"]
TIERS = ("low", "medium", "high")
STEPS = 6


def tokens(rt, images, knobs: KnobConfig, path: str) -> torch.Tensor:
    """[B, STEPS] greedy ids under ``knobs`` on ``path`` (EOS banned, so every step is compared)."""
    rt.decoder = decoder_for(path, rt.device)
    try:
        with torch.inference_mode(), rt.knobs_applied(knobs):
            visual = rt.encode_images(images, knobs.tier)
            inputs = rt.embed(visual, rt.prompt_ids(QUESTIONS[: len(images)], visual.num_tokens))
            return generate(rt, inputs, STEPS, min_new_tokens=STEPS)
    finally:
        rt.decoder = None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: two spin-waiting threads beside another job on a 2-core machine take 5x as long."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def grouped_rt():
    """The test model with the pipeline's experts kernel, which one compiled graph captures."""
    return make_runtime(experts="grouped_mm")


@pytest.fixture(scope="module")
def shallow_rt():
    """The tiny preset at 3 blocks: inductor's compile time grows with depth, the semantics do not."""
    torch.manual_seed(0)
    rt = load_runtime("tiny", device="cpu", vocab=VOCAB, dims=dataclasses.replace(TEST_DIMS, num_layers=3),
                      experts_implementation="grouped_mm")
    return rt


def test_static_cache_gives_eager_tokens_over_the_whole_tiny_grid(tiny_rt, images):
    """Every configuration of the default grid, each decoded from a fork of its (tier, top_k) prompt cache as the
    accuracy table does."""
    configs = [KnobConfig(t, k, n) for t in TIERS for k in range(4, 9) for n in range(12, 17)]
    qids = tiny_rt.tokenizer(QUESTIONS, add_special_tokens=False)["input_ids"]
    eager = rollout_batch(tiny_rt, images, qids, configs, STEPS).tokens
    tiny_rt.decoder = StaticDecoder("static")
    try:
        static = rollout_batch(tiny_rt, images, qids, configs, STEPS).tokens
    finally:
        tiny_rt.decoder = None
    for knobs in configs:
        assert torch.equal(static[knobs], eager[knobs]), knobs.label


def test_generate_on_the_static_path_gives_eager_tokens_with_eos_allowed(tiny_rt, images):
    for knobs in (KnobConfig("high", 8, 16), KnobConfig("low", 4, 12)):
        with torch.inference_mode(), tiny_rt.knobs_applied(knobs):
            visual = tiny_rt.encode_images(images, knobs.tier)
            inputs = tiny_rt.embed(visual, tiny_rt.prompt_ids(QUESTIONS, visual.num_tokens))
            eager = generate(tiny_rt, inputs, STEPS)
            tiny_rt.decoder = StaticDecoder("static")
            try:
                assert torch.equal(generate(tiny_rt, inputs, STEPS), eager), knobs.label
            finally:
                tiny_rt.decoder = None


def test_compiled_step_gives_eager_tokens_at_every_tier_and_compiles_once(shallow_rt, images):
    """top-4 at fewer blocks, where both knobs act; every corner of the 16-block model is a slow test below."""
    corners = [KnobConfig(t, 4, 2) for t in TIERS]
    eager = {k: tokens(shallow_rt, images, k, "eager") for k in corners}
    shallow_rt.decoder = StaticDecoder("compiled")
    try:
        for knobs in corners:
            with torch.inference_mode(), shallow_rt.knobs_applied(knobs):
                visual = shallow_rt.encode_images(images, knobs.tier)
                inputs = shallow_rt.embed(visual, shallow_rt.prompt_ids(QUESTIONS, visual.num_tokens))
                assert torch.equal(generate(shallow_rt, inputs, STEPS, min_new_tokens=STEPS), eager[knobs]), knobs
        # Every tier's prompt fits one cache length: one step per (top_k, blocks), whatever the tier
        assert shallow_rt.decoder.compiled_steps == 1
        graphs = counters["stats"]["unique_graphs"]
        for knobs in corners:  # a configuration seen again: its graph is reused, nothing is traced again
            with torch.inference_mode(), shallow_rt.knobs_applied(knobs):
                visual = shallow_rt.encode_images(images, knobs.tier)
                inputs = shallow_rt.embed(visual, shallow_rt.prompt_ids(QUESTIONS, visual.num_tokens))
                generate(shallow_rt, inputs, STEPS, min_new_tokens=STEPS)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        shallow_rt.decoder = None


def test_the_graph_path_without_cuda_graphs_gives_eager_tokens(shallow_rt, images):
    """The graph path's own code (mode="reduce-overhead", a step mark per token) on a CPU, where inductor skips the
    CUDA graphs: load_runtime refuses graph here, so the decoder is set by hand. The graphs themselves are
    checked on a GPU (benchmarks/gpu_decode_check.sh)."""
    knobs = KnobConfig("high", 4, 2)
    eager = tokens(shallow_rt, images, knobs, "eager")
    shallow_rt.decoder = StaticDecoder("graph")
    try:
        with torch.inference_mode(), shallow_rt.knobs_applied(knobs):
            visual = shallow_rt.encode_images(images, knobs.tier)
            inputs = shallow_rt.embed(visual, shallow_rt.prompt_ids(QUESTIONS, visual.num_tokens))
            assert torch.equal(generate(shallow_rt, inputs, STEPS, min_new_tokens=STEPS), eager)
    finally:
        shallow_rt.decoder = None


@pytest.mark.slow
def test_compiled_rollouts_give_eager_tokens_at_every_corner_of_the_default_depth(grouped_rt, images):
    """The 16-block test model, every (top_k, blocks) corner at every tier, through the accuracy table's forks."""
    configs = [KnobConfig(t, k, n) for t in TIERS for k in (4, 8) for n in (12, 16)]
    qids = grouped_rt.tokenizer(QUESTIONS, add_special_tokens=False)["input_ids"]
    eager = rollout_batch(grouped_rt, images, qids, configs, STEPS).tokens
    grouped_rt.decoder = StaticDecoder("compiled")
    try:
        compiled = rollout_batch(grouped_rt, images, qids, configs, STEPS).tokens
        assert grouped_rt.decoder.compiled_steps == 4
    finally:
        grouped_rt.decoder = None
    for knobs in configs:
        assert torch.equal(compiled[knobs], eager[knobs]), knobs.label


@pytest.mark.parametrize("family", ["qwen3_vl_moe", "glm4v_moe", "internvl"])
def test_hf_families_decode_alike_on_the_static_path(family, tmp_path):
    """M-RoPE positions ([3, B, L]: Qwen3-VL-MoE, GLM-4.5V) advance through the static step as through eager's."""
    rt = load_runtime(save_hub_checkpoint(tmp_path / family, family, seed=5), device="cpu", tier_tokens=FAMILY_TIERS)
    images = torch.from_numpy(np.stack([np.array(picture(rt.image_size, rt.image_size))] * 3))
    qids = rt.tokenizer(FAMILY_QUESTIONS, add_special_tokens=False)["input_ids"]
    configs = [KnobConfig(t, k, n) for t in ("low", "high") for k in (1, 2) for n in (2, rt.num_layers)]
    eager = rollout_batch(rt, images, qids, configs, STEPS).tokens
    rt.decoder = StaticDecoder("static")
    static = rollout_batch(rt, images, qids, configs, STEPS).tokens
    for knobs in configs:
        assert torch.equal(static[knobs], eager[knobs]), knobs.label


def test_continuing_a_cache_without_block_0_is_refused_by_name(tiny_rt, images):
    """HF reads the query's position from the first cache layer, which would not advance: eager's mask came out one
    position short."""
    tiny_rt.decoder = StaticDecoder("static")
    try:
        with torch.inference_mode():
            visual = tiny_rt.encode_images(images, "high")
            inputs = tiny_rt.embed(visual, tiny_rt.prompt_ids(QUESTIONS, visual.num_tokens))
            cache = new_cache(tiny_rt)
            hidden = prefill(tiny_rt, inputs, cache)
            first = next_token(tiny_rt, tiny_rt.model.lm_head(hidden[:, -1]), ban_eos=True)
            for path in ("static", "eager"):
                tiny_rt.decoder = decoder_for(path, tiny_rt.device)
                with tiny_rt.blocks_run(range(1, 16)), pytest.raises(ValueError, match="block 0 does not run"):
                    continue_greedy(tiny_rt, first, cache, inputs["attention_mask"], inputs["position_ids"], STEPS)
            # decoding without a cache (generate's way when block 0 does not run) is the eager recompute on every path
            tiny_rt.decoder = StaticDecoder("static")
            with tiny_rt.blocks_applied(range(1, 16), 8):
                static = generate(tiny_rt, inputs, 3, min_new_tokens=3)
                tiny_rt.decoder = None
                assert torch.equal(static, generate(tiny_rt, inputs, 3, min_new_tokens=3))
    finally:
        tiny_rt.decoder = None


def test_graph_is_refused_off_a_gpu_and_unknown_paths_by_name():
    with pytest.raises(InputError, match="needs a CUDA device.*use model.decode=compiled"):
        decoder_for("graph", torch.device("cpu"))
    with pytest.raises(InputError, match="needs a CUDA device"):
        load_runtime("tiny", device="cpu", vocab=VOCAB, dims=TEST_DIMS, decode="graph")
    with pytest.raises(InputError, match="allowed: eager, static, compiled, graph"):
        decoder_for("cuda_graphs", torch.device("cpu"))
    assert decoder_for("eager", torch.device("cpu")) is None


def test_compiling_the_eager_experts_loop_is_refused_by_name(images):
    rt = make_runtime(experts="eager")
    with pytest.raises(InputError, match="experts kernel.*grouped_mm"):
        tokens(rt, images[:1], KnobConfig("low", 4, 12), "compiled")


def test_cache_lengths_are_rounded_up_to_the_bucket():
    assert cache_length(20, 8) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET - 7, 8) == CACHE_BUCKET
    assert cache_length(CACHE_BUCKET - 6, 8) == 2 * CACHE_BUCKET
