"""What an accuracy table holds, in a few numbers: data/rollouts/summary.json, metrics/accuracy_table.json and
the per-configuration CSV for ``dvc plots``.

Every number is one of :mod:`knobctl.table.measures` (accuracy per configuration, full, smallest, the best
static configuration, the per-sample oracle), with its convention for missing cells: an error row counts as a
wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from knobctl.io import round4 as _r
from knobctl.knobs import KnobConfig
from knobctl.table.measures import (
    best_static,
    config_accuracy,
    full_index,
    oracle_scores,
    score_matrix,
    smallest_index,
)


def summarize(rows: pd.DataFrame, configs: Sequence[KnobConfig]) -> dict[str, Any]:
    """data/rollouts/summary.json: a headline block (full, smallest, best static configuration, per-sample
    oracle), the table's size, and per question type the same measures. Accuracy per configuration is in
    :func:`per_config_table`'s CSV."""
    matrix = score_matrix(rows, [k.label for k in configs])  # [S, C]
    per_config, oracle = config_accuracy(matrix), oracle_scores(matrix)  # [C], [S]
    full, smallest, best = full_index(configs), smallest_index(configs), best_static(per_config)
    types = rows.drop_duplicates("sample_id").set_index("sample_id")["question_type"].reindex(matrix.index)
    by_type: dict[str, Any] = {}
    for qtype in sorted(types.unique()):
        sub = matrix[(types == qtype).to_numpy()]
        accs = config_accuracy(sub)
        by_type[str(qtype)] = {"samples": len(sub), "full": _r(accs[full]), "smallest": _r(accs[smallest]),
                               "mean_over_configs": _r(accs.mean()), "oracle": _r(oracle_scores(sub).mean())}
    errors = rows["error"].notna()
    return {
        "headline": {"full_accuracy": _r(per_config[full]), "smallest_accuracy": _r(per_config[smallest]),
                     "best_static_accuracy": _r(per_config[best]), "oracle_accuracy": _r(oracle.mean())},
        "samples": int(rows["sample_id"].nunique()),
        "configurations": len(configs),
        "rollouts": len(rows),
        "error_rows": int(errors.sum()),
        "error_samples": int(rows.loc[errors, "sample_id"].nunique()),
        "full_config": configs[full].label,
        "full_accuracy": _r(per_config[full]),
        "smallest_config": configs[smallest].label,
        "smallest_accuracy": _r(per_config[smallest]),
        "best_static": {"config": configs[best].label, "accuracy": _r(per_config[best])},
        "oracle_accuracy": _r(oracle.mean()),
        "oracle_gain_over_full": _r(oracle.mean() - per_config[full]),
        "mean_output_tokens": _r(rows.loc[~errors, "output_tokens"].mean()),  # an error row has no answer
        "per_question_type": by_type,
    }


def table_metrics(full: dict[str, Any]) -> dict[str, Any]:
    """metrics/accuracy_table.json from :func:`summarize`'s result: its headline, the best static configuration
    and the table's size. Everything else stays in data/rollouts/summary.json, per configuration in the CSV."""
    return {"headline": {**full["headline"], "best_static_config": full["best_static"]["config"],
                         **{k: full[k] for k in ("samples", "error_samples")}}}


def per_config_table(rows: pd.DataFrame, configs: Sequence[KnobConfig]) -> pd.DataFrame:
    """Accuracy per configuration, for ``dvc plots``."""
    acc = config_accuracy(score_matrix(rows, [k.label for k in configs]))
    return pd.DataFrame([{**k.as_dict(), "config": k.label, "accuracy": _r(a)} for k, a in zip(configs, acc)])
