"""Online rollouts: the real model's answer, its VQA score and a measured latency per cell."""

from __future__ import annotations

import numpy as np

from knobctl.knobs import KnobConfig
from knobctl.model.timing import answer_fixed
from knobctl.table.online import OnlineCells
from knobctl.vqa.metric import vqa_score
from tests.conftest import make_runtime, vqa_frame


def test_online_cells_are_scored_and_timed_one_by_one():
    rt, frame = make_runtime(), vqa_frame(3)
    configs = [KnobConfig("low", 4, 12), KnobConfig("high", 8, 16)]
    cells = OnlineCells(rt, frame, configs)
    scores, ms = cells(np.array([0, 2, 2]), np.array([1, 0, 1]))
    for (s, c), score in zip([(0, 1), (2, 0), (2, 1)], scores):
        answer = rt.answer([frame["image"].iloc[s]], [frame["question"].iloc[s]], configs[c])[0]
        assert score == vqa_score(answer, list(frame["answers"].iloc[s]))
    assert (ms > 0).all() and (ms < 10_000).all() and cells.calls == 3
    answer, t = answer_fixed(rt, frame["image"].iloc[0], frame["question"].iloc[0], configs[0])
    assert isinstance(answer, str) and t > 0
