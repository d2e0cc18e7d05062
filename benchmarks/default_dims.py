"""Which tiny-model dimensions make every knob buy time on this CPU (issue 16, "latency the knobs buy").

For each candidate ``model.dims`` (random weights: content does not change cost), times one request
(vision + prefill + decode, the profiler's harness, batch 1) at the full and cheapest configurations and
at each knob's lowest setting with the others at maximum, per experts kernel; every round runs every
(candidate, kernel, configuration) once in a shuffled order, so a slow spell of the machine hits all
alike. Also times one training step (forward + backward, batch ``--train-batch``) at the full
configuration, which is what a candidate costs train_base.

    python benchmarks/default_dims.py --rounds 7
    python benchmarks/default_dims.py --candidates '{"h128": {"hidden_size": 128, "vision_pool": 1}}'

Prints, per candidate and kernel, the median request ms per configuration and the ratios the issue's
goals are about: full / cheapest, and full / (one knob at its lowest).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from knobctl.knobs import KnobConfig
from knobctl.latency.profiling import Case, RuntimeMeasurer
from knobctl.latency.request import request_ms
from knobctl.model.decoding import prefill
from knobctl.model.presets import TinyDims
from knobctl.model.runtime import load_runtime

CONFIGS = {
    "full": KnobConfig("high", 8, 16),
    "cheapest": KnobConfig("low", 4, 12),
    "tier low": KnobConfig("low", 8, 16),
    "tier medium": KnobConfig("medium", 8, 16),
    "top_k 4": KnobConfig("high", 4, 16),
    "blocks 12": KnobConfig("high", 8, 12),
}
CANDIDATES = {
    "today (h64, pool 2)": {},
    "h64, pool 1": {"vision_pool": 1},
    "h128 i64, pool 1": {"hidden_size": 128, "expert_intermediate": 64, "vision_pool": 1},
    "h128 i128 v128, pool 1": {"hidden_size": 128, "expert_intermediate": 128, "vision_hidden": 128,
                               "vision_intermediate": 256, "vision_pool": 1},
}
VOCAB = [f"w{i}" for i in range(200)]


def train_step_seconds(rt, batch: int, text_tokens: int, repeats: int) -> float:
    """Median wall time of forward + backward of the LM at the full configuration."""
    rt.model.train()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, rt.config.vision_config.image_size, rt.config.vision_config.image_size, 3),
                           dtype=torch.uint8, generator=gen)
    questions = [[7] * text_tokens for _ in range(batch)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        visual = rt.encode_images(images, "high")  # [B, T, H]
        inputs = rt.embed(visual, rt.prompt_from_ids(questions, visual.num_tokens))
        hidden = prefill(rt, inputs)  # [B, L, H]
        rt.model.lm_head(hidden[:, -2:]).float().square().mean().backward()
        rt.model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    rt.model.eval()
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default=None, help="JSON {name: {dims field: value}}; default: a built-in set")
    ap.add_argument("--kernels", default="eager,grouped_mm")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--text-tokens", type=int, default=10)
    ap.add_argument("--output-tokens", type=int, default=2, help="generated tokens (an answer word and the end token)")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--train-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    candidates = json.loads(args.candidates) if args.candidates else CANDIDATES
    measurers, train_s = {}, {}
    for name, fields in candidates.items():
        dims = TinyDims(**fields)
        for kernel in args.kernels.split(","):
            torch.manual_seed(0)
            rt = load_runtime("tiny", device="cpu", vocab=VOCAB, dims=dims, experts_implementation=kernel)
            measurers[(name, kernel)] = RuntimeMeasurer(rt, 1, dims.image_size, 0)
        train_s[name] = train_step_seconds(rt, args.train_batch, args.text_tokens, args.train_repeats)
    cells = [(m, c) for m in measurers for c in CONFIGS]
    ms: dict[tuple, list[float]] = {cell: [] for cell in cells}
    rng = np.random.default_rng(0)
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for i in rng.permutation(len(cells)):
            m, c = cells[i]
            t = measurers[m](Case(CONFIGS[c], args.text_tokens, args.output_tokens))
            ms[(m, c)].append(float(request_ms(t.vision_ms, t.prefill_ms, t.decode_ms_per_token, args.output_tokens)))
    print(f"{args.rounds} rounds, batch 1, text {args.text_tokens} tokens, {args.output_tokens} generated, "
          f"{args.threads} thread(s); ms = median request latency")
    print("| candidate | kernel | train step s | " + " | ".join(CONFIGS) + " | full/cheapest | full/tier low | "
          "full/top_k 4 | full/blocks 12 |")
    print("|---" * (len(CONFIGS) + 7) + "|")
    for (name, kernel) in measurers:
        med = {c: float(np.median(ms[((name, kernel), c)][1:])) for c in CONFIGS}
        ratios = [med["full"] / med[c] for c in ("cheapest", "tier low", "top_k 4", "blocks 12")]
        print(f"| {name} | {kernel} | {train_s[name]:.2f} | " + " | ".join(f"{med[c]:.1f}" for c in CONFIGS)
              + " | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


if __name__ == "__main__":
    main()
