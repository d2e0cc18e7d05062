"""``knobctl compare``: rank DVC experiments (or any git revisions) on the headline, with intervals.

A reward sweep (``dvc exp run -S reward.gamma=4``, ...) leaves one set of metrics per experiment. This
reads each one's ``metrics/validate.json`` and ``metrics/train.json`` through DVC (so an experiment that
is not checked out is read from git) and ranks them on one headline figure:

* ``validate`` (real clocks): the controller's mean accuracy within budget over ``lookup`` (the best single
  configuration per budget at the live speed), with its paired 95% bootstrap interval over test samples;
* ``train`` (held-out samples, estimated latency): the mean gain over the best static configuration where
  a choice exists, with its paired 95% interval.

Two runs' intervals come from different measurements, so they are not paired with each other; where the
intervals of two neighbours in the ranking overlap, their difference is reported as within noise (a
conservative reading: a difference can be real and still overlap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knobctl.params import InputError

#: headline name -> (metrics file, value key, interval key prefix, what it is)
HEADLINES: dict[str, tuple[str, str, str, str]] = {
    "validate": ("metrics/validate.json", "mean_gain_over_lookup_within_budget",
                 "mean_gain_over_lookup_within_budget", "accuracy within budget over lookup, real clocks"),
    "train": ("metrics/train.json", "mean_gain_where_choice", "mean_gain_where_choice",
              "held-out gain over best static where a choice exists, estimated latency"),
}


@dataclass(frozen=True)
class Entry:
    """One experiment's headline: the value and its 95% interval (accuracy, 0..1; None where not measured)."""

    name: str
    rev: str | None
    value: float | None
    low: float | None
    high: float | None

    def overlaps(self, other: Entry) -> bool:
        if None in (self.low, self.high, other.low, other.high):
            return True  # no interval: nothing says the difference is beyond noise
        return not (self.low > other.high or other.low > self.high)  # type: ignore[operator]


def headline_entry(name: str, rev: str | None, metrics: Mapping[str, Any], headline: str) -> Entry:
    """The ``headline`` figure of one run's metrics file (its parsed JSON)."""
    _, key, ci, _ = HEADLINES[headline]
    h = metrics.get("headline") or {}
    return Entry(name, rev, h.get(key), h.get(f"{ci}_ci95_low"), h.get(f"{ci}_ci95_high"))


def experiments(repo: str | None = None) -> list[tuple[str, str | None]]:
    """(name, git revision) of the workspace, the baseline commit and every DVC experiment on it."""
    import dvc.api

    out: list[tuple[str, str | None]] = []
    for row in dvc.api.exp_show(repo=repo):
        rev = row.get("rev")
        if rev == "workspace":
            out.append(("workspace", None))
        elif row.get("Experiment"):
            out.append((str(row["Experiment"]), rev))
        elif rev:
            out.append((str(rev), rev))
    return out


def load(revs: Sequence[tuple[str, str | None]], headline: str, repo: str | None = None) -> list[Entry]:
    """Each revision's headline, read through DVC; a revision without the metrics file is an error naming it."""
    import dvc.api

    path = HEADLINES[headline][0]
    target = str(Path(repo) / path) if repo else path  # dvc resolves a relative target against the working dir
    entries = []
    for name, rev in revs:
        try:
            metrics = dvc.api.metrics_show(target, repo=repo, rev=rev)
        except Exception as exc:  # dvc raises its own errors for unknown revisions and missing files
            raise InputError(f"{name}: cannot read {path} ({type(exc).__name__}: {exc}); run `dvc repro` or "
                             f"`dvc exp run` there first") from exc
        entries.append(headline_entry(name, rev, metrics, headline))
    return entries


def rank(entries: Sequence[Entry]) -> list[Entry]:
    """Best first; runs without the figure last, in the order given."""
    measured = sorted((e for e in entries if e.value is not None), key=lambda e: -e.value)  # type: ignore[operator]
    return measured + [e for e in entries if e.value is None]


def render(entries: Sequence[Entry], headline: str) -> str:
    """A Markdown table: rank, run, value and interval in points, and whether it is beyond noise of the next."""
    ranked = rank(entries)
    lines = [f"Ranked on {HEADLINES[headline][3]} ({HEADLINES[headline][0]}), points with 95% intervals:", "",
             "| rank | run | gain | 95% interval | against the next |", "| --- | --- | --- | --- | --- |"]
    for i, e in enumerate(ranked):
        nxt = ranked[i + 1] if i + 1 < len(ranked) else None
        if e.value is None:
            vs = "not measured"
        elif nxt is None or nxt.value is None:
            vs = "-"
        else:
            vs = f"within noise of {nxt.name}" if e.overlaps(nxt) else f"above {nxt.name} beyond noise"
        value = "-" if e.value is None else f"{100 * e.value:+.2f}"
        ci = "-" if e.low is None or e.high is None else f"[{100 * e.low:+.2f}, {100 * e.high:+.2f}]"
        lines.append(f"| {i + 1} | {e.name} | {value} | {ci} | {vs} |")
    return "\n".join(lines)
