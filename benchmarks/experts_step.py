"""Training-step time of the tiny model per expert count, expert width and experts kernel.

One synthetic batch of 128 easy-VQA-sized requests (64 px image, high tier, a 7-word question, a
one-word answer), every block at top-8, forward + backward + AdamW step, 2 torch threads; the
median of 3 steps after a warm-up step. What sparse routing (OLMoE: 8 of 64 experts) costs the
tiny default's training on this CPU (docs/LOG.md, "Eight of 64 experts, as OLMoE routes").

    python benchmarks/experts_step.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from knobctl.knobs import KnobConfig
from knobctl.model.decoding import teacher_forced
from knobctl.model.presets import TinyDims
from knobctl.model.runtime import load_runtime

CASES = [(8, 32, "eager"), (16, 32, "eager"), (32, 8, "eager"), (64, 4, "eager"), (64, 8, "eager"),
         (64, 8, "grouped_mm"), (8, 32, "grouped_mm"), (64, 32, "grouped_mm")]  # (experts, width, kernel)
WORDS = ["what", "is", "the", "color", "shape", "of", "this", "red", "blue", "circle", "yes", "no"]


def step_seconds(num_experts: int, width: int, kernel: str, batch: int = 128, steps: int = 4) -> float:
    """Median time of a training step after the first, for one tiny model."""
    torch.manual_seed(0)
    rt = load_runtime("tiny", device="cpu", vocab=WORDS,
                      dims=TinyDims(num_experts=num_experts, expert_intermediate=width, top_k=8))
    rt.model.config.text_config._experts_implementation = kernel
    rt.model.train()
    images = torch.randint(0, 255, (batch, 64, 64, 3), dtype=torch.uint8)
    questions = rt.tokenizer(["what is the color of this shape"] * batch, add_special_tokens=False)["input_ids"]
    answers = rt.tokenizer(["red"] * batch, add_special_tokens=False)["input_ids"]
    opt = torch.optim.AdamW(rt.model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with rt.knobs_applied(KnobConfig("high", 8, rt.num_layers)):
            logits, labels = teacher_forced(rt, rt.encode_images(images, "high"), questions, answers)  # [B, S, V]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    torch.set_num_threads(2)
    for num_experts, width, kernel in CASES:
        print(f"{num_experts} experts x {width}, top-8, {kernel}: step {step_seconds(num_experts, width, kernel):.3f} s "
              "(median of 3 after a warm-up step)", flush=True)


if __name__ == "__main__":
    main()
