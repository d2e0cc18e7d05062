"""Online rollouts: run the real model for (sample, configuration) cells and time them.

Controller training uses this when the policy samples a cell the accuracy table lacks, and
for its optional online refresh. Each cell is one request of batch 1, answered with
:meth:`Runtime.answer` and timed from the raw image to the last token with a device sync
at both ends: the same request the estimator prices and the validation stage measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from knobctl.knobs import KnobConfig
from knobctl.profiling import Stopwatch
from knobctl.runtime import Runtime
from knobctl.vqa_metric import vqa_score


def timed_answer(rt: Runtime, image: bytes, question: str, knobs: KnobConfig) -> tuple[str, float]:
    """One request, its answer and wall-clock latency in ms (the profiler's device-synced stopwatch)."""
    watch = Stopwatch.for_device(rt.device)
    start = watch.mark()
    answer = rt.answer([image], [question], knobs, batch_size=1)[0]
    return answer, (watch.mark() - start) * 1000.0


class OnlineOracle:
    """``oracle(sample_rows, config_indices) -> (scores, latency_ms)`` against the real model.

    ``samples`` are the table's samples in its row order (columns image, question, answers);
    ``configs`` is the lookup tables' configuration order.
    """

    def __init__(self, rt: Runtime, samples: pd.DataFrame, configs: Sequence[KnobConfig], warmup: bool = True):
        self.rt, self.samples, self.configs = rt, samples.reset_index(drop=True), list(configs)
        self.calls = 0
        if warmup and len(self.samples):
            # The first request pays one-off allocations; keep them out of every measured cell.
            timed_answer(rt, self.samples["image"].iloc[0], self.samples["question"].iloc[0], self.configs[-1])

    def __call__(self, sample_rows: np.ndarray, config_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty(len(sample_rows), dtype=np.float32)
        latency = np.empty(len(sample_rows), dtype=np.float32)
        for i, (s, c) in enumerate(zip(sample_rows.tolist(), config_indices.tolist())):
            row = self.samples.iloc[s]
            answer, ms = timed_answer(self.rt, row["image"], row["question"], self.configs[c])
            scores[i], latency[i] = vqa_score(answer, list(row["answers"])), ms
        self.calls += len(sample_rows)
        return scores, latency
