"""How much of each block's router weight the experts a lower top_k keeps carry.

Lowering top_k from 8 to 4 removes the experts ranked 5-8 per token. Whether that costs accuracy
depends on how much router weight they carried and on how different their functions are. This
prints, per block of a trained checkpoint, the mean sorted router probabilities over the tokens of a
seeded set of questions (at the full configuration) and the share of the top-8 weight the top 4 carry.

With ``--ablate`` it then scores the same questions (VQA accuracy, high tier, every block) at top_k
8 / 4 / 2 / 1 and with every MoE output after the decision block scaled by 0.5 and by 0: whether
the experts are interchangeable (top-1 as good as top-8) and how much the model needs them at all.

    python benchmarks/router_spread.py [--model models/base] [--data data/vqa/val.parquet] [--samples 200] [--ablate]
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd
import torch

from knobctl.knobs import KnobConfig
from knobctl.model.runtime import Runtime, load_runtime
from knobctl.vqa.metric import vqa_score
from knobctl.vqa.sources import decode_images


def ablation(rt: Runtime, df: pd.DataFrame, images: Any, num_layers: int) -> None:
    """Accuracy at lower top-k and with the MoE outputs of blocks 1.. scaled, per question type."""
    scale = {"value": 1.0}

    def scaled(_moe: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return out * scale["value"]

    layers = rt.model.model.language_model.layers
    handles = [layer.mlp.register_forward_hook(scaled) for layer in list(layers)[1:]]
    try:
        for top_k, value in [(8, 1.0), (4, 1.0), (2, 1.0), (1, 1.0), (8, 0.5), (8, 0.0)]:
            scale["value"] = value
            answers = rt.answer(images, df["question"].tolist(), KnobConfig("high", top_k, num_layers),
                                batch_size=len(df))
            scores = pd.Series([vqa_score(a, refs) for a, refs in zip(answers, df["answers"])], index=df.index)
            per_type = " ".join(f"{t} {v:.3f}" for t, v in scores.groupby(df["question_type"]).mean().items())
            print(f"top_k {top_k}, MoE output x{value}: accuracy {scores.mean():.3f} ({per_type})")
    finally:
        for h in handles:
            h.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/vqa/val.parquet")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ablate", action="store_true", help="also score lower top-k and scaled MoE outputs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rt = load_runtime(args.model, device="cpu")
    df = pd.read_parquet(args.data).sample(args.samples, random_state=args.seed)
    layers = rt.model.model.language_model.layers
    sorted_probs: dict[int, list[torch.Tensor]] = {}

    def hook_for(block: int) -> Any:
        def hook(gate: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            h = inputs[0].reshape(-1, inputs[0].shape[-1])  # [T, H]
            probs = torch.softmax(h @ gate.weight.T, dim=-1)  # [T, E]
            sorted_probs.setdefault(block, []).append(probs.sort(dim=-1, descending=True).values)
        return hook

    handles = [layer.mlp.gate.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    full = KnobConfig("high", rt.model.config.text_config.num_experts_per_tok, len(layers))
    images = decode_images(df["image"].tolist())
    rt.answer(images, df["question"].tolist(), full, batch_size=args.samples)
    for h in handles:
        h.remove()
    shares = []
    for block in sorted(sorted_probs):
        mean = torch.cat(sorted_probs[block]).mean(dim=0)  # [E]
        share = float(mean[:4].sum() / mean[:8].sum())
        shares.append(share)
        print(f"block {block:2d}: " + " ".join(f"{p:.2f}" for p in mean[:8].tolist()) + f"  top-4 share {share:.2f}")
    print(f"router_spread: top 4 of 8 experts carry {min(shares):.2f}-{max(shares):.2f} of the router weight "
          f"({len(shares)} blocks, {args.samples} questions)")
    if args.ablate:
        ablation(rt, df, images, len(layers))


if __name__ == "__main__":
    main()
