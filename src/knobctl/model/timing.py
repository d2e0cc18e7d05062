"""Clocks for measured latency: a device-synchronised stopwatch and one timed fixed-knob request.

The profile, the online rollouts, the two-stage flow and validation all time requests the same
way: every mark synchronises the device first (``torch.cuda.synchronize`` on a GPU) and reads
``time.perf_counter``; a request is timed from its decoded image and question string to its last
token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from knobctl.knobs import KnobConfig
from knobctl.model.images import ImageLike, Images
from knobctl.model.runtime import Runtime


@dataclass
class Stopwatch:
    """Device-synchronised marks in seconds; the clock and sync are injectable for tests."""

    clock: Callable[[], float] = time.perf_counter
    sync: Callable[[], None] = field(default=lambda: None)

    @classmethod
    def for_device(cls, device: torch.device) -> Stopwatch:
        if device.type == "cuda":
            return cls(sync=lambda: torch.cuda.synchronize(device))
        return cls()

    def mark(self) -> float:
        self.sync()
        return self.clock()


@torch.inference_mode()
def answer_fixed(rt: Runtime, image: ImageLike | Images, question: str, knobs: KnobConfig,
                 max_new_tokens: int | None = None) -> tuple[str, float]:
    """One request at fixed knobs, timed from the decoded image to the last token: (answer, latency ms).
    ``image`` is one image or a batch of one in any form :meth:`Runtime.answer` takes."""
    watch = Stopwatch.for_device(rt.device)
    start = watch.mark()
    answer = rt.answer(image, [question], knobs, max_new_tokens, batch_size=1)[0]
    return answer, (watch.mark() - start) * 1e3
