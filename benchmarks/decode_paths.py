"""Decode ms per token of each decode path (model.decode) at the corners of the grid, beside the active weight bytes.

    python benchmarks/decode_paths.py [--models models/base,molmoe-1b-shape] [--paths eager,static,compiled]
        [--device cpu] [--context 64] [--tokens 16] [--rounds 5] [--threads 1] [--out results.json]
    python benchmarks/decode_paths.py --device cuda --models molmoe-1b-shape --paths eager,static,compiled,graph \
        --experts batched_mm --context 608 --check        # the GPU goal (benchmarks/gpu_decode_check.sh)

Per model: one runtime (weights shared by every path, each path with its own static caches and compiled steps).
Each round runs every (path, corner) once in a shuffled order; a corner's prompt (``--context`` random text tokens,
no image: decode cost does not depend on what the context holds) is prefilled once per round and every path
continues a fork of it, timed from the first generated token to the last (EOS banned, ``--tokens`` per request,
the static paths' copy of the prompt cache included). Warm-up rounds (compiles happen there) are not recorded;
medians over rounds.

Active weight bytes per generated token: every weight of the blocks run, ``top_k`` of each MoE block's routed
experts (the decision block keeps the model's own), the final norm and LM head, one embedding row. ``bytes`` is a
corner's bytes over top-8/all blocks'; ``saving`` is 1 - ms/ms(top-8/all) against 1 - bytes. ``--check`` tests the
GPU goal on the first model: the fastest path at top-8/all blocks within 3x the HBM floor (active bytes /
``--bandwidth`` TB/s; default by device name: H100 3.35, H200 4.8), and top-4/fewer blocks saving at least 80% of
what its active bytes save.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from knobctl.knobs import KnobConfig
from knobctl.model.decoding import continue_greedy, fork_cache, new_cache, next_token, prefill
from knobctl.model.families import layer_routers
from knobctl.model.runtime import DTYPES, Runtime, device_name, load_runtime
from knobctl.model.static_decode import decoder_for
from knobctl.model.timing import Stopwatch

BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35}  # datasheet HBM bandwidth (SXM)


def corners(rt: Runtime, blocks: list[int] | None) -> list[KnobConfig]:
    """top-8 / top-4 at all blocks and at three quarters of them (16 / 12 on a 16-block model), the low tier
    (no image enters here: the tier names nothing but the label)."""
    full = rt.num_layers
    low, high = blocks or [full * 3 // 4, full]
    top = min(8, rt.num_experts)
    return [KnobConfig(rt.tier_names[0], k, n) for n in (high, low) for k in (top, top // 2)]


def active_bytes(rt: Runtime, knobs: KnobConfig) -> int:
    """Weight bytes one decode step reads under ``knobs`` (module docstring)."""
    total = sum(p.numel() * p.element_size() for m in (rt.model.lm_head, rt.lm.norm) for p in m.parameters())
    embed = rt.lm.embed_tokens.weight
    total += embed.shape[1] * embed.element_size()
    with rt.knobs_applied(knobs):  # the routers hold the scope's top_k (the decision block its own)
        for layer in rt.lm.layers:
            routers = layer_routers([layer])[0]
            for name, p in layer.named_parameters():
                share = 1.0
                if routers and "experts" in name.split(".") and p.shape[0] == routers[0].num_experts:
                    share = routers[0].top_k / routers[0].num_experts  # routed experts [E, ...]: top_k of them
                total += int(p.numel() * p.element_size() * share)
    return total


def context_inputs(rt: Runtime, context: int, seed: int) -> dict[str, torch.Tensor]:
    """A prompt of ``context`` random word tokens, batch 1: embeddings, mask and positions ([3, 1, L] for M-RoPE)."""
    gen = torch.Generator().manual_seed(seed)
    specials = set(rt.ids.values()) | rt.layout.special_ids
    words = torch.tensor([i for i in range(min(len(rt.tokenizer), rt.lm.embed_tokens.num_embeddings))
                          if i not in specials])
    ids = words[torch.randint(len(words), (1, context), generator=gen)].to(rt.device)  # [1, L]
    pos = torch.arange(context, device=rt.device)[None]  # [1, L]
    rope = getattr(rt.lm.config, "rope_parameters", None) or {}
    if rope.get("mrope_section"):
        pos = pos[None].expand(3, 1, context)  # [3, 1, L]: text positions on every M-RoPE axis
    return {"inputs_embeds": rt.lm.embed_tokens(ids), "attention_mask": torch.ones_like(ids), "position_ids": pos}


@torch.inference_mode()
def measure(rt: Runtime, paths: list[str], configs: list[KnobConfig], args: argparse.Namespace) -> pd.DataFrame:
    decoders = {p: decoder_for(p, rt.device) for p in paths}
    inputs = context_inputs(rt, args.context, args.seed)
    mask, pos = inputs["attention_mask"], inputs["position_ids"]
    watch = Stopwatch.for_device(rt.device)
    jobs = [(p, k) for p in paths for k in configs]
    rows = []
    for rnd in range(-args.warmup, args.rounds):
        base: dict[KnobConfig, tuple[Any, torch.Tensor]] = {}
        start = time.perf_counter()
        for i in np.random.default_rng([args.seed, rnd + args.warmup]).permutation(len(jobs)):
            path, knobs = jobs[i]
            with rt.knobs_applied(knobs):
                if knobs not in base:  # one prefill per corner and round; every path continues a fork of it
                    cache = new_cache(rt)
                    hidden = prefill(rt, inputs, cache)  # [1, L, H]
                    base[knobs] = cache, next_token(rt, rt.model.lm_head(hidden[:, -1]), ban_eos=True)
                cache, first = base[knobs]
                rt.decoder = decoders[path]
                try:
                    t0 = watch.mark()
                    out = continue_greedy(rt, first, fork_cache(cache), mask, pos, args.tokens, args.tokens)
                    t1 = watch.mark()
                finally:
                    rt.decoder = None
            rows.append({"round": rnd, "path": path, "config": knobs.label, "top_k": knobs.top_k,
                         "num_blocks": knobs.num_blocks, "ms_per_token": (t1 - t0) * 1e3 / (args.tokens - 1),
                         "tokens": out[0].tolist()})
        print(f"  round {rnd}{' (warm-up)' if rnd < 0 else ''}: {time.perf_counter() - start:.1f} s", flush=True)
    return pd.DataFrame(rows)


def summarize(rows: pd.DataFrame, bytes_by: dict[str, int], paths: list[str]) -> pd.DataFrame:
    """Median ms per token per (corner, path), corners in :func:`corners`' order (top-8/all blocks first)."""
    rec = rows[rows["round"] >= 0]
    table = rec.pivot_table(index="config", columns="path", values="ms_per_token", aggfunc="median")
    table = table.loc[list(bytes_by), paths]
    full = table.index[0]
    table["active_MB"] = [bytes_by[c] / 1e6 for c in table.index]
    table["bytes"] = table["active_MB"] / table.loc[full, "active_MB"]
    for p in paths:
        table[f"saving_{p}"] = 1 - table[p] / table.loc[full, p]
    table["saving_bytes"] = 1 - table["bytes"]
    return table


def same_tokens(rows: pd.DataFrame, paths: list[str]) -> bool:
    """Whether every path generated the eager path's tokens in every round (the same prompt per corner)."""
    ref = rows[rows["path"] == paths[0]].groupby("config")["tokens"].first()
    return bool((rows.apply(lambda r: r["tokens"] == ref[r["config"]], axis=1)).all())


def check(table: pd.DataFrame, paths: list[str], bandwidth_tbs: float) -> dict[str, Any]:
    """The GPU goal on one model's table (module docstring)."""
    full, small = table.index[0], table.index[-1]
    best = min(paths, key=lambda p: table.loc[full, p])
    floor_ms = table.loc[full, "active_MB"] * 1e6 / (bandwidth_tbs * 1e12) * 1e3
    ms = float(table.loc[full, best])
    saving, want = float(table.loc[small, f"saving_{best}"]), 0.8 * float(table.loc[small, "saving_bytes"])
    return {"path": best, "ms_per_token": ms, "hbm_floor_ms": float(floor_ms), "x_floor": float(ms / floor_ms),
            "floor_met": bool(ms <= 3 * floor_ms), "saving": saving,
            "bytes_saving": float(table.loc[small, "saving_bytes"]), "saving_met": bool(saving >= want),
            "bandwidth_tbs": bandwidth_tbs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models/base", help="comma-separated sources (folders or presets)")
    ap.add_argument("--paths", default="eager,static,compiled", help="eager,static,compiled,graph (graph: CUDA)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", help="the presets' dtype (a checkpoint folder runs float32)")
    ap.add_argument("--experts", default=None, help="HF experts kernel (grouped_mm, batched_mm); default: the model's")
    ap.add_argument("--blocks", default=None, help="fewer,all blocks of the corners, e.g. 12,16 (default: 3/4, all)")
    ap.add_argument("--context", type=int, default=32, help="prompt tokens before decoding (the default model's "
                    "prompts: about 30)")
    ap.add_argument("--tokens", type=int, default=16, help="tokens generated per request (the first by the prefill)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bandwidth", type=float, default=None, help="HBM TB/s for the floor (default: by device name)")
    ap.add_argument("--check", action="store_true", help="test the GPU goal on the first model")
    ap.add_argument("--out", default=None, help="JSON of every model's table (and the check)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.paths.split(",")
    for p in paths:
        decoder_for(p, torch.device(args.device))  # a path the device cannot run stops here, before any load
    blocks = [int(b) for b in args.blocks.split(",")] if args.blocks else None
    dev = torch.device(args.device)
    name = device_name(dev)
    print(f"decode_paths: {name}, torch {torch.__version__}, {platform.python_version()}, paths {paths}, "
          f"context {args.context}, {args.tokens} tokens, {args.rounds} rounds (+{args.warmup} warm-up)", flush=True)
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "args": vars(args), "models": {}}
    for i, source in enumerate(args.models.split(",")):
        t0 = time.perf_counter()
        folder = Path(source).is_dir()
        rt = load_runtime(source, device=args.device, dtype=None if folder else DTYPES[args.dtype],
                          experts_implementation=args.experts)
        configs = corners(rt, blocks)
        experts = rt.lm.config._experts_implementation
        print(f"{source}: loaded in {time.perf_counter() - t0:.0f} s ({experts} experts, "
              f"{next(rt.model.parameters()).dtype})", flush=True)
        rows = measure(rt, paths, configs, args)
        table = summarize(rows, {k.label: active_bytes(rt, k) for k in configs}, paths)
        same = same_tokens(rows, paths)
        print(table.round(3).to_string())
        best = min(paths, key=lambda p: table.iloc[0][p])
        print(f"{source}: fastest {best} {table.iloc[0][best]:.2f} ms/token at {table.index[0]} (eager "
              f"{table.iloc[0][paths[0]]:.2f}); {table.index[-1]} saves {table.iloc[-1][f'saving_{best}']:.1%} "
              f"({paths[0]} {table.iloc[-1][f'saving_{paths[0]}']:.1%}, active bytes "
              f"{table.iloc[-1]['saving_bytes']:.1%}); every path gives {paths[0]}'s tokens: {same}", flush=True)
        entry = {"experts": experts, "table": json.loads(table.to_json(orient="index")), "same_tokens": same,
                 "wall_s": round(time.perf_counter() - t0, 1)}
        if args.check and i == 0:
            bw = args.bandwidth or next((v for k, v in BANDWIDTH_TBS.items() if k in name), None)
            if bw is None:
                print("decode_paths: --check needs --bandwidth on this device", flush=True)
            else:
                entry["check"] = res = check(table, paths, bw)
                print(f"GPU goal ({source}): {res['path']} {res['ms_per_token']:.2f} ms/token = "
                      f"{res['x_floor']:.1f}x the HBM floor {res['hbm_floor_ms']:.2f} ms ({bw} TB/s): "
                      f"{'met' if res['floor_met'] else 'NOT met'} (<= 3x); top-4/fewer saves {res['saving']:.1%} "
                      f"of {res['bytes_saving']:.1%} in bytes: {'met' if res['saving_met'] else 'NOT met'} (>= 80%)",
                      flush=True)
        results["models"][source] = entry
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        del rt
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)  # a path the device cannot run: its message and exit status 2
