"""Statistics of a latency profile: per-cell summary, repeatability and the machine's drift.

On a shared machine the whole host can run markedly slower for tens of seconds. Because every
round runs every case in a shuffled order, the cases measured around the same moment are a
random sample of the grid, so their latencies relative to their own medians estimate the
machine's speed at that moment (``local_speed``). Dividing by it gives drift-corrected
latencies (``*_adj`` columns): the same profile with the host's slow spells taken out. The raw
columns are never altered; the estimator fits the corrected medians unless told otherwise.
"""

from __future__ import annotations

import math

import pandas as pd

from knobctl.latency.request import PARTS

CELL = ["config", "tier", "top_k", "num_blocks", "visual_tokens", "text_tokens", "input_tokens", "output_tokens"]
CASE = ["config", "text_tokens", "output_tokens"]


def relative_latency(rows: pd.DataFrame) -> pd.Series:
    """total_ms over the median total_ms of the same case (NaN for error rows)."""
    ok = rows["error"].isna()
    med = rows[ok].groupby(CASE)["total_ms"].transform("median")
    return (rows.loc[ok, "total_ms"] / med).reindex(rows.index)


def local_speed(rows: pd.DataFrame, window: int = 31) -> pd.Series:
    """The machine's speed factor at each row: median relative latency of the ``window`` rows around it in time.

    Time is each worker's own (a Ray profile's worker measures its rounds in order), so a window does not
    straddle two devices."""
    timeline = [c for c in ("worker", "round", "order") if c in rows]
    order = rows.sort_values(timeline, kind="stable").index
    rel = relative_latency(rows).loc[order]
    speed = rel.rolling(window, center=True, min_periods=1).median()
    return speed.fillna(1.0).reindex(rows.index)


def with_speed(rows: pd.DataFrame, window: int = 31) -> pd.DataFrame:
    out = rows.copy()
    out["speed"] = local_speed(rows, window)
    return out


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (configuration, lengths): successful repeats, median, p10, p90 and CV of each part.

    With a ``speed`` column (see :func:`with_speed`) also the drift-corrected median and CV.
    """
    keys = CELL
    ok = rows[rows["error"].isna()].copy()
    adjust = "speed" in ok
    if adjust:
        for part in (*PARTS, "total_ms"):
            ok[f"{part}_adj"] = ok[part] / ok["speed"]
    grouped = ok.groupby(keys, sort=True)
    out = grouped.size().rename("repeats").to_frame()
    for part in (*PARTS, "total_ms"):
        g = grouped[part]
        out[f"{part}_median"] = g.median()
        out[f"{part}_p10"] = g.quantile(0.1)
        out[f"{part}_p90"] = g.quantile(0.9)
        out[f"{part}_cv"] = g.std(ddof=0) / g.mean()
        # Robust CV (1.4826 MAD / median): a burst of host noise in one round barely moves it.
        out[f"{part}_rcv"] = 1.4826 * g.apply(lambda x: (x - x.median()).abs().median()) / g.median()
        if adjust:
            ga = grouped[f"{part}_adj"]
            out[f"{part}_adj_median"] = ga.median()
            out[f"{part}_adj_cv"] = ga.std(ddof=0) / ga.mean()
    errors = rows[rows["error"].notna()].groupby(keys).size().rename("errors")
    out = out.join(errors, how="outer").reset_index()
    out["repeats"] = out["repeats"].fillna(0).astype(int)
    out["errors"] = out["errors"].fillna(0).astype(int)
    return out


def round_speed(rows: pd.DataFrame) -> list[float]:
    """Per round, the median over cases of total_ms / that case's median: the machine's drift.

    Values near 1.0 everywhere mean a steady machine; a round at 1.5 ran 50% slow across the
    board (host contention, clocks), which interleaving spreads over every configuration.
    """
    rel = relative_latency(rows)
    if rel.notna().sum() == 0:
        return []
    return [round(float(v), 3) for v in rel.groupby(rows["round"]).median().tolist()]


def median_cv(summary: pd.DataFrame, kind: str = "cv") -> dict[str, float]:
    """Median over (configuration, lengths) of the coefficient of variation across repeats.

    ``kind`` is ``cv`` (std / mean), ``rcv`` (1.4826 MAD / median) or ``adj_cv`` (drift-corrected).
    """
    out = {}
    for part in (*PARTS, "total_ms"):
        if f"{part}_{kind}" not in summary:
            continue
        col = summary[f"{part}_{kind}"].dropna()
        out[part] = float(col.median()) if len(col) else math.nan
    return out
