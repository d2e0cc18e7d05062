"""Online rollouts: run the real model for (sample, configuration) cells and time them.

Controller training uses this when the policy samples a cell the accuracy table lacks, and
for its optional online refresh. Each cell is one request of batch 1, answered with
:meth:`Runtime.answer` and timed by :func:`knobctl.model.timing.answer_fixed` (from the raw image
bytes to the last token, with a device sync at both ends), as the validation stage times its
fixed-configuration requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from knobctl.knobs import KnobConfig
from knobctl.model.runtime import Runtime
from knobctl.model.timing import answer_fixed
from knobctl.vqa.metric import vqa_score


class OnlineCells:
    """``cells(sample_rows, config_indices) -> (scores, latency_ms)``: cells answered and timed by the real model.

    ``samples`` are the table's samples in its row order (columns image, question, answers);
    ``configs`` is the lookup tables' configuration order.
    """

    def __init__(self, rt: Runtime, samples: pd.DataFrame, configs: Sequence[KnobConfig], warmup: bool = True):
        self.rt, self.samples, self.configs = rt, samples.reset_index(drop=True), list(configs)
        self.calls = 0
        if warmup and len(self.samples):
            # The first request pays one-off allocations; keep them out of every measured cell.
            answer_fixed(rt, self.samples["image"].iloc[0], self.samples["question"].iloc[0], self.configs[-1])

    def __call__(self, sample_rows: np.ndarray, config_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty(len(sample_rows), dtype=np.float32)
        latency = np.empty(len(sample_rows), dtype=np.float32)
        for i, (s, c) in enumerate(zip(sample_rows.tolist(), config_indices.tolist())):
            row = self.samples.iloc[s]
            answer, ms = answer_fixed(self.rt, row["image"], row["question"], self.configs[c])
            scores[i], latency[i] = vqa_score(answer, list(row["answers"])), ms
        self.calls += len(sample_rows)
        return scores, latency
