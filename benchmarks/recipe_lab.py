"""Recipe lab: train a variant of the default model at reduced scale and print what its knobs trade.

Before a long train_base run, compare designs (data, model dims, training recipe) in minutes: this trains a
variant with params.yaml plus ``--set`` overrides (dotted keys of any section), scores every configuration of
the knob grid on a seeded subset of its val split (the accuracy table's own rollouts), times every
configuration on this machine (the profiler's harness, shuffled rounds, medians), and prints what the
tradeoff stage would: per question type, the accuracy at the full configuration and at each knob's lowest
setting with the others at their maximum (the crossed costs), each knob's latency, and the supervised probe's
and the oracle's held-out gain over the best static configuration per budget (the headline where 20-80% of
configurations fit).

    python benchmarks/recipe_lab.py --name base --set train_base.steps=600
    python benchmarks/recipe_lab.py --name e64 --set model.dims.num_experts=64 --set model.dims.expert_intermediate=8

Lab scale (override with --set): 3,000 train images with 288 facts (4 relations of the 72 kinds), 400
vision warm-start steps, 600 VLM steps at batch 64, 800 val questions: about 8 minutes on the 2-core VM.
Fewer facts and far fewer steps than the default: the lab tells whether a design learns and how its types
use the tier; depth costs moved a lot between lab scale and the long run (docs/LOG.md, "Designs
tried"), so a design's depth is measured by the long run. Each summary goes to
benchmarks/results/recipe_lab/<name>.json; docs/LOG.md, "Designs tried", holds the designs tried.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from knobctl.base.training import TrainBaseParams, train_base
from knobctl.controller.tables import CacheTables, budgets_between, complexity_of
from knobctl.controller.tradeoff import headroom, knob_sweeps, probe_headroom, type_costs
from knobctl.controller.training import split_samples
from knobctl.execution import use_threads
from knobctl.knobs import KnobGrid
from knobctl.latency.profiling import Case, RuntimeMeasurer
from knobctl.latency.request import request_ms
from knobctl.model.presets import ModelParams
from knobctl.params import load_params, section, seed_of
from knobctl.table.accuracy_table import AccuracyTable
from knobctl.table.rollouts import RolloutParams, rollout_part
from knobctl.vqa.sources import DataParams, prepare, select_samples

LAB_SCALE = {
    "prepare_data.mixed.train_images": 3000,
    "prepare_data.mixed.test_images": 2,
    "prepare_data.mixed.relations": 4,
    "train_base.vision_warmstart_steps": 400,
    "train_base.steps": 600,
    "train_base.batch_size": 64,
    "train_base.checkpoint_every": 100000,
}


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
        if node is None:
            raise SystemExit(f"--set {key}: {part} is null in params.yaml")
    node[last] = value


def time_configs(rt, configs, text_tokens: int, rounds: int, seed: int) -> np.ndarray:
    """Median request ms per configuration (vision + prefill + one decode step: an answer word and EOS)."""
    measure = RuntimeMeasurer(rt, 1, rt.image_size, seed)
    ms = [[] for _ in configs]
    rng = np.random.default_rng(seed)
    for r in range(rounds + 1):  # round 0 warms up
        for j in rng.permutation(len(configs)):
            t = measure(Case(configs[j], text_tokens, 2))
            if r:
                ms[j].append(float(request_ms(t.vision_ms, t.prefill_ms, t.decode_ms_per_token, 2)))
    return np.array([np.median(m) for m in ms])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted params key, YAML value")
    ap.add_argument("--val-samples", type=int, default=800)
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: every core)")
    ap.add_argument("--out", default="benchmarks/results/recipe_lab")
    args = ap.parse_args()
    t0 = time.perf_counter()
    params = load_params(args.params)
    for key, value in LAB_SCALE.items():
        set_dotted(params, key, value)
    for pair in args.set:
        key, _, raw = pair.partition("=")
        set_dotted(params, key, yaml.safe_load(raw))
    use_threads(args.threads)
    seed = seed_of(params)
    grid = KnobGrid.from_params(section(params, "knobs"))
    model = ModelParams.from_params(section(params, "model"))
    splits = prepare(DataParams.from_params(section(params, "prepare_data")), seed)
    rt, summary = train_base(splits["train"], grid, model, TrainBaseParams.from_params(section(params, "train_base")),
                             seed)
    train_s = time.perf_counter() - t0
    val = select_samples(splits["val"], min(args.val_samples, len(splits["val"])), seed)
    configs = grid.configs()
    rows, feats = rollout_part(rt, val, configs, RolloutParams(batch_size=200))
    table = AccuracyTable.from_frames(rows, feats)
    text = int(np.median(table.input_tokens[:, -1])) - int(table.input_tokens[:, -1].min() - 4)
    latency = time_configs(rt, configs, max(text, 4), args.timing_rounds, seed)  # [C]
    s = len(table.sample_ids)
    tables = CacheTables(sample_ids=table.sample_ids, question_types=table.question_types, configs=tuple(configs),
                         tiers=table.tiers, scores=torch.from_numpy(table.scores),
                         latency_ms=torch.from_numpy(np.broadcast_to(latency, (s, len(configs))).astype(np.float32)),
                         language=torch.from_numpy(table.language), vision=torch.from_numpy(table.vision),
                         complexity=complexity_of(tuple(configs)))
    tp = section(params, "tradeoff")
    train_idx, eval_idx = split_samples(s, tp.get("eval_fraction", 0.2), seed)
    room = headroom(tables, train_idx, eval_idx, budgets_between(tables.latency_ms[train_idx], tp.get("num_budgets", 8)),
                    tp.get("probe_l2", 100.0))
    out = {"name": args.name, "set": args.set, "train_seconds": round(train_s, 1),
           "total_seconds": round(time.perf_counter() - t0, 1), "samples": s, "train_summary": summary,
           "probe_gain_mid": probe_headroom(room),
           "types": type_costs(tables), "knobs": knob_sweeps(tables), "headroom": room}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name}.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\n## {args.name}: {' '.join(args.set) or '(lab scale)'}  (train {train_s:.0f} s, all "
          f"{out['total_seconds']:.0f} s, {s} val questions)")
    print("| type | n | full | tier | top_k | blocks | smallest | cost: low tier | lowest top_k | fewest blocks |")
    print("|---" * 10 + "|")
    for t, r in out["types"].items():
        sweep = ["/".join(f"{v:.0f}" for v in r["knobs"][knob].values()) for knob in ("tier", "top_k", "num_blocks")]
        print(f"| {t} | {r['n']} | {r['full']:.1f} | " + " | ".join(sweep) + f" | {r['smallest']:.1f} | "
              + " | ".join(f"{r['cost'][knob]:.1f}" for knob in ("tier", "top_k", "num_blocks")) + " |")
    for knob, rows_ in out["knobs"].items():
        print(f"{knob}: " + ", ".join(f"{r[knob]}: {r['accuracy']:.1f} @ {r['latency_ms']:.1f} ms" for r in rows_))
    print("headroom: " + "; ".join(f"{r['budget_ms']:.1f} ms fit {r['fit_share']:.0%} {r['static_config']} "
                                    f"probe {r['probe_gain']} oracle {r['oracle_gain']}" for r in room))
    print(f"probe gain where 20-80% fit: {out['probe_gain_mid']}")


if __name__ == "__main__":
    main()
