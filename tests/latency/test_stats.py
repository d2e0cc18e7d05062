"""Profile statistics: summary, robust CV, per-round speed and drift correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from knobctl.latency.stats import local_speed, median_cv, round_speed, summarize, with_speed


def test_summary_statistics():
    rows = pd.DataFrame([
        {"config": "low/k4/b12", "tier": "low", "top_k": 4, "num_blocks": 12, "visual_tokens": 1,
         "text_tokens": 4, "input_tokens": 7, "output_tokens": 2, "vision_ms": v, "prefill_ms": 2 * v,
         "decode_ms_per_token": 1.0, "total_ms": 3 * v + 1, "error": None}
        for v in (1.0, 2.0, 3.0, 4.0, 100.0)
    ])
    s = summarize(rows).iloc[0]
    assert s["repeats"] == 5 and s["errors"] == 0
    assert s["vision_ms_median"] == 3.0 and s["prefill_ms_median"] == 6.0
    assert s["vision_ms_p10"] == pytest.approx(1.4) and s["vision_ms_p90"] == pytest.approx(61.6)
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["vision_ms_cv"] == pytest.approx(values.std() / values.mean())
    assert s["vision_ms_rcv"] == pytest.approx(1.4826 * 1.0 / 3.0)  # the outlier barely moves the robust CV
    assert s["decode_ms_per_token_cv"] == 0.0


def rows_with_slow_spell(seed: int = 0) -> pd.DataFrame:
    """3 cases x 6 rounds, interleaved; the machine runs 1.6x slow for one round and a half."""
    rng = np.random.default_rng(seed)
    base = {"a": 10.0, "b": 20.0, "c": 40.0}
    rows = []
    for r in range(6):
        for pos, c in enumerate(rng.permutation(list(base))):
            slow = 1.6 if (r == 2 or (r == 3 and pos < 2)) else 1.0
            total = base[c] * slow * (1 + 0.005 * rng.standard_normal())
            rows.append({"config": c, "tier": "low", "top_k": 4, "num_blocks": 12, "visual_tokens": 1,
                         "text_tokens": 4, "input_tokens": 7, "output_tokens": 2, "round": r, "order": pos,
                         "vision_ms": total / 10, "prefill_ms": total / 2, "decode_ms_per_token": total * 0.4,
                         "total_ms": total, "error": None})
    return pd.DataFrame(rows)


def test_round_speed_shows_the_slow_round():
    speeds = round_speed(rows_with_slow_spell())
    assert len(speeds) == 6 and speeds[2] == pytest.approx(1.6, rel=0.02)
    assert all(s == pytest.approx(1.0, abs=0.02) for i, s in enumerate(speeds) if i not in (2, 3))


def test_drift_correction_takes_the_slow_spell_out():
    rows = rows_with_slow_spell()
    speed = local_speed(rows, window=3)
    slow = (rows["round"] == 2)
    assert speed[slow].median() == pytest.approx(1.6, rel=0.05)
    summary = summarize(with_speed(rows, window=3))
    raw, adj = median_cv(summary)["total_ms"], median_cv(summary, "adj_cv")["total_ms"]
    assert raw > 0.2 and adj < 0.05
    assert summary["total_ms_adj_median"].to_numpy() == pytest.approx([10.0, 20.0, 40.0], rel=0.02)
    assert "total_ms_adj_median" not in summarize(rows)  # no speed column: raw statistics only


def test_error_rows_do_not_move_the_speed():
    rows = rows_with_slow_spell()
    bad = rows.iloc[[0]].assign(total_ms=np.nan, error="RuntimeError: boom", round=6, order=0)
    speed = local_speed(pd.concat([rows, bad], ignore_index=True), window=3)
    assert np.isfinite(speed).all()


def test_the_speed_follows_each_workers_own_timeline():
    """Two Ray workers take turns at rounds, one twice as slow: every row's speed is its own worker's, with no
    window straddling the two (sorting by round alone would mix them at every round boundary)."""
    rows = pd.DataFrame([
        {"config": c, "text_tokens": 4, "output_tokens": 2, "round": r, "order": o, "worker": r % 2,
         "total_ms": 10.0 * (1 + r % 2) * (1 + o), "error": None}
        for r in range(4) for o, c in enumerate(["a", "b"])
    ])
    speed = local_speed(rows, window=5)
    assert speed.to_numpy() == pytest.approx(np.where(rows["worker"] == 1, 2 / 1.5, 1 / 1.5))
    blind = local_speed(rows.drop(columns="worker"), window=5)  # a window that ignores workers mixes them
    assert blind.to_numpy() != pytest.approx(speed.to_numpy())
