"""End-to-end check of the latency estimator against real `rt.answer` calls.

For N random configurations of the grid (seeded), answer one real request (an easy-VQA val
question when data/vqa exists, else a synthetic one) with `rt.answer` at batch 1, timed with
perf_counter (device-synchronised), interleaved over repeats, median per configuration. The
estimator is asked for the same configuration, text length and the number of tokens the
request really generated (EOS included). Loads the runtime exactly as profile_latency does.

Each `rt.answer` call is followed by the profiler's own harness on the same case, so the
report separates two things on a machine whose speed drifts: whether the profiler measures
what a request costs (harness vs answer, same moment) and how far the machine has moved
since the profile (harness now vs estimator).

    python benchmarks/e2e_latency.py                      # default params.yaml
    python benchmarks/e2e_latency.py --configs 20 --repeats 7 --out e2e.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from knobctl.knobs import KnobGrid
from knobctl.latency.estimator import LatencyEstimator
from knobctl.latency.profiling import Case, ProfileParams, RuntimeMeasurer, load_profiled_runtime
from knobctl.latency.request import request_ms
from knobctl.model.decoding import generate
from knobctl.model.presets import EOS
from knobctl.model.timing import Stopwatch
from knobctl.params import apply_overrides, load_params, section, seed_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile_latency overrides")
    ap.add_argument("--estimator", default="models/latency_estimator")
    ap.add_argument("--data", default="data/vqa/val.parquet")
    ap.add_argument("--configs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None, help="write the per-configuration rows and summary as JSON")
    args = ap.parse_args()
    params = load_params(args.params)
    seed = seed_of(params)
    grid = KnobGrid.from_params(section(params, "knobs"))
    p = ProfileParams.from_params(apply_overrides(section(params, "profile_latency"), args.set, "profile_latency"))
    rt = load_profiled_runtime(p)
    est = LatencyEstimator.load(args.estimator)
    rng = np.random.default_rng([seed, 11])
    configs = [grid.configs()[i] for i in rng.choice(len(grid.configs()), size=min(args.configs, len(grid.configs())), replace=False)]

    if Path(args.data).is_file():
        row = pd.read_parquet(args.data).iloc[int(rng.integers(0, 1000))]
        from knobctl.model.images import to_image_tensor

        image = (to_image_tensor(row["image"]) * 255).round().to(torch.uint8).permute(1, 2, 0)
        question = row["question"]
    else:
        image = torch.randint(0, 256, (p.image_size, p.image_size, 3), dtype=torch.uint8)
        question = " ".join(["what"] * 8)
    images = image.unsqueeze(0)  # [1, H, W, 3]
    text_tokens = len(rt.tokenizer(question, add_special_tokens=False)["input_ids"])
    watch = Stopwatch.for_device(rt.device)

    def out_tokens(knobs) -> int:
        with rt.knobs_applied(knobs), torch.inference_mode():
            visual = rt.encode_images(images, knobs.tier)
            tokens = generate(rt, rt.embed(visual, rt.prompt_ids([question], visual.num_tokens)), rt.spec.max_new_tokens)
        row = tokens[0].tolist()
        return row.index(rt.ids[EOS]) + 1 if rt.ids[EOS] in row else len(row)

    harness = RuntimeMeasurer(rt, 1, p.image_size, seed, watch)
    n_out = {k.label: out_tokens(k) for k in configs}
    cases = {k.label: Case(k, text_tokens, n_out[k.label]) for k in configs}
    for k in configs:  # warm-up
        rt.answer(images, [question], knobs=k)
        harness(cases[k.label])
    answer_ms: dict[str, list[float]] = {k.label: [] for k in configs}
    harness_ms: dict[str, list[float]] = {k.label: [] for k in configs}
    for r in range(args.repeats):
        for i in np.random.default_rng([seed, 12, r]).permutation(len(configs)):
            k = configs[i]
            t0 = watch.mark()
            rt.answer(images, [question], knobs=k)
            answer_ms[k.label].append((watch.mark() - t0) * 1e3)
            t = harness(cases[k.label])
            harness_ms[k.label].append(float(request_ms(t.vision_ms, t.prefill_ms, t.decode_ms_per_token,
                                                        n_out[k.label])))
    rows = []
    for k in configs:
        pred = float(est.predict_total(k.tier, k.top_k, k.num_blocks, text_tokens, n_out[k.label])[0])
        measured = float(np.median(answer_ms[k.label]))
        now = float(np.median(harness_ms[k.label]))
        rows.append({"config": k.label, "text_tokens": text_tokens, "output_tokens": n_out[k.label],
                     "answer_ms": measured, "estimated_ms": pred, "harness_ms": now,
                     "error": (pred - measured) / measured, "harness_error": (now - measured) / measured,
                     "drift": (now - pred) / pred})
    df = pd.DataFrame(rows)
    abs_err = df["error"].abs()
    summary = {"configs": len(df), "repeats": args.repeats, "median_abs_error": float(abs_err.median()),
               "mean_error": float(df["error"].mean()), "max_abs_error": float(abs_err.max()),
               "within_10pct": float((abs_err <= 0.10).mean()),
               "median_abs_harness_error": float(df["harness_error"].abs().median()),
               "median_drift_since_profile": float(df["drift"].median()), "device": str(rt.device)}
    print(df.round(3).to_string(index=False))
    print(f"e2e_latency: {len(df)} configurations, estimator vs rt.answer median |error| "
          f"{summary['median_abs_error']:.1%} (mean {summary['mean_error']:+.1%}, within 10% "
          f"{summary['within_10pct']:.0%}); profiler harness vs rt.answer now {summary['median_abs_harness_error']:.1%}; "
          f"machine drift since the profile {summary['median_drift_since_profile']:+.1%}")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
