"""Stage profile_latency: vision / prefill / per-token decode latency over the knob grid.

Runs on its own too (no dvc needed), e.g. on a GPU machine:
    python stages/profile_latency.py --set source=molmoe-1b-shape dtype=bfloat16
    python stages/profile_latency.py --set source=qwen3-vl-30b-a3b-shape dtype=bfloat16
An HF family's tiers are params' model.tier_tokens. source is
{model sources}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's library, not an installed copy

from knobctl.model.sources import source_parser  # after the path: this checkout's library


def main(argv: list[str] | None = None) -> None:
    ap = source_parser(__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override profile_latency keys (YAML values), e.g. rounds=3 dtype=bfloat16")
    ap.add_argument("--out", default="data/profile")
    ap.add_argument("--metrics", default="metrics/profile.json")
    ap.add_argument("--cache", default=".knobctl_cache/profile")
    args = ap.parse_args(argv)
    from knobctl.params import apply_overrides, load_params, section, seed_of

    params = load_params(args.params)  # a bad params file fails before the library loads torch
    from knobctl.knobs import KnobGrid
    from knobctl.latency.profile_stage import profile_latency, write_profile

    own = apply_overrides(section(params, "profile_latency", args.params), args.set, "profile_latency")
    # a standalone profile of a preset may come with no model section at all
    profile = profile_latency(own, KnobGrid.from_params(section(params, "knobs", args.params)), params.get("model"),
                              seed_of(params, args.params), args.cache)
    write_profile(profile, args.out, args.metrics)
    print(profile.line())


if __name__ == "__main__":
    from knobctl.params import run_stage

    run_stage(main)
