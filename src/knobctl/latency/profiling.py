"""Latency profiling over the knob grid: vision, prefill and per-token decode, separately.

How a request is timed (one *case* = knobs x text length x output length):

* **vision**: raw uint8 images -> tier resize/crop -> vision tower -> pooling -> projector;
* **prefill**: prompt embedding (visual features scattered in) + the language model's forward
  over the whole prompt + the first greedy token;
* **decode**: the remaining ``output_tokens - 1`` greedy steps with the KV cache, reported per
  step. EOS is banned until the forced length, so a random-weight model is timed correctly.

So a request's latency is ``vision + prefill + (output_tokens - 1) * decode_per_token``.

Timing discipline: warm-up rounds that are not recorded, then ``rounds`` rounds in which every
case runs once, in an order shuffled per round, so drift (thermal, clocks, neighbours) hits all
configurations alike. Each mark synchronises the device first (``torch.cuda.synchronize``) and
reads ``time.perf_counter``. A case that raises (out of memory, a kernel error) becomes a row
with its ``error`` and profiling goes on; rows are flushed to part files as they are measured,
so an interrupted run resumes where it stopped (:mod:`knobctl.latency.profile_run`; on Ray, with
the rounds spread over workers of one device name: :mod:`knobctl.latency.ray_profiler`).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from knobctl.cluster import EXECUTORS, RayParams
from knobctl.execution import use_threads
from knobctl.knobs import KnobConfig
from knobctl.latency.request import PARTS, request_ms
from knobctl.model.decoding import generate
from knobctl.model.presets import EXPERTS_IMPLEMENTATIONS
from knobctl.model.runtime import DTYPES, Runtime, device_name, load_runtime
from knobctl.model.timing import Stopwatch
from knobctl.params import build, require, require_choice, require_device, require_int

ROW_COLUMNS = (
    "config", "tier", "top_k", "num_blocks", "visual_tokens", "text_tokens", "input_tokens", "output_tokens",
    "batch_size", "round", "order", *PARTS, "total_ms", "error", "device", "host", "worker",
)


@dataclass(frozen=True)
class ProfileParams:
    """The ``profile_latency`` section of params.yaml."""

    source: str = "models/base"
    device: str = "auto"
    dtype: str = "float32"
    experts_implementation: str | None = None
    batch_size: int = 1
    image_size: int = 64
    text_tokens: tuple[int, ...] = (4, 10, 16)
    output_tokens: tuple[int, ...] = (2, 6)
    warmup_rounds: int = 1
    rounds: int = 5
    flush_every: int = 50
    num_threads: int = 1
    # Where the rounds run (src/knobctl/latency/ray_profiler.py): local, or Ray workers of one device name.
    executor: str = "local"
    ray: RayParams = field(default_factory=RayParams)

    def __post_init__(self) -> None:
        require_choice(self.executor, "profile_latency.executor", EXECUTORS)
        self.ray.check("profile_latency.ray")
        for name in ("batch_size", "image_size", "rounds", "flush_every"):
            require_int(getattr(self, name), f"profile_latency.{name}")
        require_int(self.warmup_rounds, "profile_latency.warmup_rounds", 0)
        require_int(self.num_threads, "profile_latency.num_threads", 0)
        for name in ("text_tokens", "output_tokens"):
            values = getattr(self, name)
            require(len(values) > 0, f"profile_latency.{name}", values, "give a list such as [4, 10, 16]")
            for v in values:
                require_int(v, f"profile_latency.{name}")
            require(len(set(values)) == len(values), f"profile_latency.{name}", list(values), "it repeats a value")
        require_choice(self.dtype, "profile_latency.dtype", tuple(DTYPES))
        require_device(self.device, "profile_latency.device")
        require(self.experts_implementation in (None, *EXPERTS_IMPLEMENTATIONS), "profile_latency.experts_implementation",
                self.experts_implementation, f"allowed: null (the model's own), {', '.join(EXPERTS_IMPLEMENTATIONS)}")

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ProfileParams:
        return build(cls, section, "profile_latency")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Case:
    """One thing to time: a knob configuration at a text length and a forced output length."""

    knobs: KnobConfig
    text_tokens: int
    output_tokens: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.knobs.label, self.text_tokens, self.output_tokens)


@dataclass(frozen=True)
class Timing:
    vision_ms: float
    prefill_ms: float
    decode_ms_per_token: float  # NaN when a single token is generated (no decode step)


def cases_for(configs: Iterable[KnobConfig], text_tokens: Sequence[int], output_tokens: Sequence[int]) -> list[Case]:
    return [Case(k, t, o) for k in configs for t in text_tokens for o in output_tokens]


def schedule(cases: Sequence[Case], rounds: int, seed: int, stream: int = 0) -> list[tuple[int, int, Case]]:
    """(round, position, case) for every case in every round, in a fresh shuffled order per round.

    ``stream`` separates the warm-up's orders (1) from the measured rounds' (0).
    """
    out = []
    for r in range(rounds):
        order = np.random.default_rng([seed, stream, r]).permutation(len(cases))
        out.extend((r, pos, cases[i]) for pos, i in enumerate(order))
    return out


class RuntimeMeasurer:
    """Times one case on a runtime with fixed synthetic inputs (content does not change cost)."""

    def __init__(self, rt: Runtime, batch_size: int, image_size: int, seed: int, watch: Stopwatch | None = None):
        self.rt = rt
        self.batch_size = batch_size
        self.watch = watch or Stopwatch.for_device(rt.device)
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), dtype=torch.uint8, generator=gen)
        special = set(rt.ids.values()) | rt.layout.special_ids  # an HF family's chat and image tokens too
        self._words = [i for i in range(len(rt.tokenizer)) if i not in special] or [rt.ids["[SEP]"]]
        self.seed = seed
        self._questions: dict[int, list[list[int]]] = {}

    def question_ids(self, text_tokens: int) -> list[list[int]]:
        """Seeded per length, not drawn in the order lengths are first asked for: every Ray worker, whatever
        its first round, times the same questions."""
        if text_tokens not in self._questions:
            gen = np.random.default_rng([self.seed, text_tokens])
            self._questions[text_tokens] = [
                [int(w) for w in gen.choice(self._words, size=text_tokens)] for _ in range(self.batch_size)
            ]
        return self._questions[text_tokens]

    def prompt(self, text_tokens: int, num_visual: int) -> list[list[int]]:
        return self.rt.prompt_from_ids(self.question_ids(text_tokens), num_visual)

    def input_tokens(self, case: Case) -> int:
        return len(self.prompt(case.text_tokens, self.rt.visual_tokens(case.knobs.tier))[0])

    @torch.inference_mode()
    def __call__(self, case: Case) -> Timing:
        rt, watch = self.rt, self.watch
        marks: list[float] = []
        with rt.knobs_applied(case.knobs):
            t0 = watch.mark()
            visual = rt.encode_images(self.images, case.knobs.tier)  # [B, T, H]
            t1 = watch.mark()
            inputs = rt.embed(visual, self.prompt(case.text_tokens, visual.num_tokens))
            generate(rt, inputs, case.output_tokens, min_new_tokens=case.output_tokens,
                        on_prefill=lambda: marks.append(watch.mark()))
            t3 = watch.mark()
        t2 = marks[0]
        steps = case.output_tokens - 1
        return Timing(
            vision_ms=(t1 - t0) * 1e3,
            prefill_ms=(t2 - t1) * 1e3,
            decode_ms_per_token=(t3 - t2) * 1e3 / steps if steps else math.nan,
        )


@dataclass(frozen=True)
class DeviceTag:
    """Which device measured a row: its name (a profile merges rows of one name only), host and worker."""

    device: str
    host: str
    worker: int = 0

    @classmethod
    def here(cls, device: torch.device | None = None, worker: int = 0) -> DeviceTag:
        return cls(device_name(device or torch.device("cpu")), socket.gethostname(), worker)


def make_row(case: Case, rnd: int, pos: int, input_tokens: int, visual_tokens: int, batch_size: int,
             timing: Timing | None, error: str | None, tag: DeviceTag) -> dict[str, Any]:
    k = case.knobs
    parts = (timing.vision_ms, timing.prefill_ms, timing.decode_ms_per_token) if timing else (math.nan,) * 3
    total = float(request_ms(*parts, case.output_tokens)) if timing else math.nan
    return {
        "config": k.label, "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks,
        "visual_tokens": visual_tokens, "text_tokens": case.text_tokens, "input_tokens": input_tokens,
        "output_tokens": case.output_tokens, "batch_size": batch_size, "round": rnd, "order": pos,
        "vision_ms": parts[0], "prefill_ms": parts[1], "decode_ms_per_token": parts[2], "total_ms": total,
        "error": error, "device": tag.device, "host": tag.host, "worker": tag.worker,
    }


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def release_memory(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


def load_profiled_runtime(p: ProfileParams, tier_tokens: Mapping[str, int] | None = None,
                          decode: str = "eager") -> Runtime:
    """The runtime exactly as the profile measures it: source, device, dtype, experts kernel, threads
    (``tier_tokens``: an HF family's visual tokens per tier, params' ``model.tier_tokens``; ``decode``: the decode
    path, ``model.decode``)."""
    use_threads(p.num_threads)
    return load_runtime(p.source, device=p.device, dtype=p.torch_dtype, experts_implementation=p.experts_implementation,
                        tier_tokens=tier_tokens, decode=decode)
