"""The ``knobctl`` command (also ``python -m knobctl``).

``knobctl compare [RUN ...]`` ranks DVC experiments on the headline with their 95% intervals
(:mod:`knobctl.validate.compare`); with no RUN, the workspace, the baseline and every experiment.

``knobctl show TABLE.parquet``: a terminal view of a knobctl table.

For a latency table (raw rows or summary) it prints the provenance, the median latency
by each knob, and the slowest and fastest configurations. For an accuracy table
(``data/rollouts/rollouts.parquet``) it prints the mean VQA score by each knob and question
type, the best and worst configurations and the per-sample oracle, all by the measures every
stage uses (:mod:`knobctl.table.measures`: an error row counts as a wrong answer). Any other
Parquet file gets its provenance, shape and first rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from knobctl.contracts import table_provenance
from knobctl.latency.request import PARTS
from knobctl.latency.stats import summarize
from knobctl.table.measures import config_accuracy, oracle_scores, score_matrix, scored

META_KEYS = ("device", "dtype", "model", "model_hash", "controller", "controller_hash", "controller_trained_with",
             "split", "samples", "batch_size", "rounds", "torch", "transformers", "git_commit", "timestamp")
ACCURACY_COLUMNS = {"sample_id", "config", "tier", "top_k", "num_blocks", "score", "error"}


def latency_summary(df: pd.DataFrame) -> pd.DataFrame | None:
    """The per-(configuration, lengths) summary of a latency table, or None for other tables."""
    if "vision_ms_median" in df:
        return df
    if set(PARTS) <= set(df.columns) and "error" in df:
        return summarize(df)
    return None


def _by_knob(df: pd.DataFrame, knob: str, stat: str) -> pd.DataFrame:
    """One aggregate per value of a knob, tiers in cost order."""
    cols = [c for c in df.columns if c not in ("tier", "top_k", "num_blocks", "config")]
    by = df.groupby(knob, sort=False)[cols].agg(stat)
    if knob == "tier":
        order = [t for t in ("low", "medium", "high") if t in by.index] + sorted(set(by.index) - {"low", "medium", "high"})
        return by.loc[order]
    return by.sort_index()


def render_accuracy(rows: pd.DataFrame, top: int = 5) -> str:
    ok = scored(rows)  # every mean below counts an error row as a wrong answer
    lines = []
    for knob in ("tier", "top_k", "num_blocks"):
        by = _by_knob(ok[[knob, "score"]], knob, "mean").rename(columns={"score": "mean_vqa_score"})
        lines += [f"mean VQA score by {knob}:", by.round(4).to_string(), ""]
    if "question_type" in ok:
        by = ok.pivot_table(index="question_type", columns="tier", values="score", aggfunc="mean")
        lines += ["mean VQA score by question type and tier:", by.round(4).to_string(), ""]
    matrix = score_matrix(rows)
    per_config = pd.Series(config_accuracy(matrix), index=matrix.columns).sort_values(ascending=False, kind="stable")
    lines += [f"best {top} configurations:", per_config.head(top).round(4).to_string(), ""]
    lines += [f"worst {top} configurations:", per_config.tail(top)[::-1].round(4).to_string(), ""]
    oracle = oracle_scores(matrix).mean()
    lines.append(f"{rows['sample_id'].nunique()} samples x {rows['config'].nunique()} configurations, "
                 f"{int(rows['error'].notna().sum())} error rows, per-sample oracle {oracle:.4f}")
    return "\n".join(lines)


def render_latency(summary: pd.DataFrame, top: int = 5) -> str:
    cols = [f"{p}_median" for p in (*PARTS, "total_ms")]
    names = {f"{p}_median": p.replace("_ms_per_token", "_ms/tok") for p in (*PARTS, "total_ms")}
    lines = []
    for knob in ("tier", "top_k", "num_blocks"):
        by = _by_knob(summary[[knob, *cols]], knob, "median").rename(columns=names)
        lines += [f"median latency (ms) by {knob}:", by.round(2).to_string(), ""]
    per_config = summary.groupby("config")[cols].median().rename(columns=names).sort_values("total_ms")
    lines += [f"fastest {top} configurations (median over lengths):", per_config.head(top).round(2).to_string(), ""]
    lines += [f"slowest {top} configurations:", per_config.tail(top)[::-1].round(2).to_string(), ""]
    errors = int(summary["errors"].sum()) if "errors" in summary else 0
    cv = summary["total_ms_cv"].median() if "total_ms_cv" in summary else float("nan")
    lines.append(f"{summary['config'].nunique()} configurations, {len(summary)} (configuration, lengths) cells, "
                 f"{errors} error rows, median CV of total {cv:.1%}")
    return "\n".join(lines)


def show(path: str | Path, top: int = 5) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    df = pd.read_parquet(path)
    meta = table_provenance(path)
    head = [f"{path}: {len(df)} rows x {df.shape[1]} columns"]
    head += [f"  {k}: {meta[k]}" for k in META_KEYS if k in meta]
    summary = latency_summary(df)
    if summary is not None:
        body = render_latency(summary, top)
    elif ACCURACY_COLUMNS <= set(df.columns):
        body = render_accuracy(df, top)
    else:
        body = df.head(top * 2).to_string()
    return "\n".join(head) + "\n\n" + body


def compare(runs: Sequence[str], headline: str, repo: str | None = None) -> str:
    """The ranking of ``runs`` (experiment names or git revisions; none: every experiment) on ``headline``."""
    from knobctl.validate import compare as cmp

    known = cmp.experiments(repo)
    if runs:
        by_name = dict(known)
        revs = [(r, by_name.get(r, None if r == "workspace" else r)) for r in runs]
    else:
        revs = known
    return cmp.render(cmp.load(revs, headline, repo), headline)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="knobctl", description="knobctl command-line tools")
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("show", help="summarise a Parquet table (latency profile, accuracy table or any other)")
    sp.add_argument("path")
    sp.add_argument("--top", type=int, default=5, help="how many fastest/slowest configurations to list")
    cp = sub.add_parser("compare", help="rank DVC experiments on the headline, with 95%% intervals")
    cp.add_argument("runs", nargs="*", help="experiment names or git revisions (default: workspace, baseline and "
                    "every experiment); 'workspace' is the checked-out files")
    cp.add_argument("--on", choices=("validate", "train"), default="validate",
                    help="validate: accuracy within budget over lookup on real clocks (default); train: held-out "
                         "gain over static")
    cp.add_argument("--repo", default=None, help="the DVC repository (default: the current one)")
    args = ap.parse_args(argv)
    try:
        print(show(args.path, args.top) if args.command == "show" else compare(args.runs, args.on, args.repo))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
