"""How much of each block's router weight the experts a lower top_k keeps carry.

Lowering top_k from 8 to 4 removes the experts ranked 5-8 per token. Whether that costs accuracy
depends on how much router weight they carried and on how different their functions are. This
prints, per block of a trained checkpoint, the mean sorted router probabilities over the tokens of a
seeded set of questions (at the full configuration) and the share of the top-8 weight the top 4 carry.

    python benchmarks/router_spread.py [--model models/base] [--data data/vqa/val.parquet] [--samples 200]
"""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd
import torch

from knobctl.knobs import KnobConfig
from knobctl.model.runtime import load_runtime
from knobctl.vqa.sources import decode_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base")
    ap.add_argument("--data", default="data/vqa/val.parquet")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
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
    rt.answer(decode_images(df["image"].tolist()), df["question"].tolist(), full, batch_size=args.samples)
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


if __name__ == "__main__":
    main()
