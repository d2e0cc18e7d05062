"""Latency of a true-size HF MoE VLM shape with random weights, per knob, on one GPU (issue 18).

Builds ``qwen3-vl-30b-a3b-shape`` (Qwen3-VL-30B-A3B's published dimensions, about 62 GB in bf16:
one H200, or one 80 GB GPU with little room) directly on the device, then times, with the knobs
applied through :mod:`knobctl.model.families` (the adapter the stages will use):

* prefill per tier: one request (a 1024x768 image at the tier's visual-token cap, a short question)
  at the full top_k and blocks, the time to the first token;
* decode ms per token per (top_k, blocks): greedy ``generate`` of ``--steps + 1`` tokens minus
  that of 1 token, divided by ``--steps``, at the ``--decode-tier``.

Every figure is the median of ``--rounds`` interleaved rounds. One device call, about 3-5 minutes
on an H200 (model build included):

    python benchmarks/family_shape_latency.py --out $OUT/family_shape.json

``--tiny`` runs the same code on a tiny random model of the family (a CPU check of the script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2VLImageProcessorPil, Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from knobctl.model.families import FAMILIES, decoder, knobs_applied
from knobctl.model.presets import qwen3_vl_30b_a3b_shape_config

FAMILY = FAMILIES["qwen3_vl_moe"]


def tiny_config() -> Qwen3VLMoeConfig:
    """The shape's structure at toy size (8 layers, 16 experts, 8 active), for a CPU run of this script."""
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    return Qwen3VLMoeConfig(
        text_config={"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 8,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "moe_intermediate_size": 16,
                     "num_experts": 16, "num_experts_per_tok": 8, "rope_parameters": rope},
        vision_config={"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1]},
        image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503)


def cap(vision, max_tokens: int) -> dict[str, int]:
    """The processor's size for 4 to ``max_tokens`` visual tokens per image (Qwen3-VL's resize counts no frames)."""
    per_token = (vision.patch_size * vision.spatial_merge_size) ** 2
    return {"shortest_edge": 4 * per_token, "longest_edge": max_tokens * per_token}


def request(config: Qwen3VLMoeConfig, max_tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One request as the family's processor lays it out: a word, the image's tokens between the vision
    markers, an eight-word question."""
    vision = config.vision_config
    processor = Qwen2VLImageProcessorPil(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                                         merge_size=vision.spatial_merge_size, size=cap(vision, max_tokens),
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (768, 1024, 3), dtype=np.uint8))
    pixels = processor(images=[image], return_tensors="pt")
    visual = int(pixels["image_grid_thw"].prod(-1).sum()) // vision.spatial_merge_size**2
    ids = torch.tensor([[11, config.vision_start_token_id] + [config.image_token_id] * visual
                        + [config.vision_end_token_id] + list(range(20, 28))])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": (ids == config.image_token_id).int(), **pixels}
    return {k: v.to(device) for k, v in inputs.items()}


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model of the family (CPU check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--top-k", type=int, nargs="*", default=[4, 6, 8])
    ap.add_argument("--blocks", type=float, nargs="*", default=[0.75, 0.875, 1.0],
                    help="fractions of the decoder layers run (the first ones; block 0 always)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per configuration")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--decode-tier", default="medium")
    ap.add_argument("--experts-implementation", default=None, help="eager | grouped_mm | batched_mm (HF's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    config = tiny_config() if args.tiny else qwen3_vl_30b_a3b_shape_config()
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    start = time.perf_counter()
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the device: 31 B fp32 parameters would not fit
    try:
        with device:
            model = Qwen3VLMoeForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(saved)
    if args.experts_implementation:
        model.set_experts_implementation(args.experts_implementation)
    build_s = time.perf_counter() - start
    layers = len(decoder(model).layers)
    counts = sorted({max(1, round(f * layers)) for f in args.blocks})
    tiers = dict(FAMILY.tier_tokens)
    inputs = {tier: request(config, tokens, device) for tier, tokens in tiers.items()}
    visual = {tier: int((x["input_ids"] == config.image_token_id).sum()) for tier, x in inputs.items()}

    def generate(x: dict[str, torch.Tensor], n: int) -> None:
        model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    prefill: dict[str, list[float]] = {t: [] for t in tiers}
    decode: dict[tuple[int, int], list[float]] = {c: [] for c in itertools.product(args.top_k, counts)}
    full_k = config.text_config.num_experts_per_tok
    with torch.inference_mode():
        generate(inputs[args.decode_tier], 2)  # warm-up: kernels, allocator
        for r in range(args.rounds):
            for tier in tiers:
                with knobs_applied(model, FAMILY, range(layers), full_k):
                    prefill[tier].append(timed(lambda x=inputs[tier]: generate(x, 1), device))
            for (k, n), times in decode.items():
                with knobs_applied(model, FAMILY, range(n), k):
                    one = timed(lambda: generate(inputs[args.decode_tier], 1), device)
                    many = timed(lambda: generate(inputs[args.decode_tier], args.steps + 1), device)
                times.append((many - one) / args.steps)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    result = {
        "model": "tiny" if args.tiny else "qwen3-vl-30b-a3b-shape", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "dtype": str(dtype), "torch": torch.__version__, "layers": layers,
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3), "build_s": round(build_s, 1),
        "rounds": args.rounds, "decode_tier": args.decode_tier,
        "prefill_ms": {t: {"visual_tokens": visual[t], "median_ms": round(statistics.median(v), 2)}
                       for t, v in prefill.items()},
        "decode_ms_per_token": [{"top_k": k, "blocks": n, "median_ms": round(statistics.median(v), 3)}
                                for (k, n), v in decode.items()],
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    rows = " | ".join(str(n) for n in counts)
    print(f"\n| top_k \\ blocks | {rows} |\n| --- |{' --- |' * len(counts)}")
    for k in args.top_k:
        print(f"| {k} | " + " | ".join(f"{statistics.median(decode[(k, n)]):.2f}" for n in counts) + " |")
    print(f"{result['model']}: {result['parameters_b']} B parameters built in {build_s:.0f} s; prefill "
          + ", ".join(f"{t} {visual[t]} tokens {result['prefill_ms'][t]['median_ms']:.0f} ms" for t in tiers))


if __name__ == "__main__":
    main()
