"""`python -m knobctl show`: latency tables by knob, fastest/slowest, and other tables."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from knobctl.cli import main, show
from knobctl.io import write_parquet_atomic
from knobctl.knobs import KnobGrid


def latency_rows() -> pd.DataFrame:
    rows = []
    for r in range(3):
        for k in KnobGrid.from_params({"top_k": [4, 8], "num_blocks": [12, 16]}).configs():
            base = {"low": 1.0, "medium": 2.0, "high": 3.0}[k.tier] + k.num_blocks + k.top_k / 10
            rows.append({"config": k.label, "tier": k.tier, "top_k": k.top_k, "num_blocks": k.num_blocks,
                         "visual_tokens": 1, "text_tokens": 4, "input_tokens": 7, "output_tokens": 2,
                         "batch_size": 1, "round": r, "order": 0, "vision_ms": base / 10, "prefill_ms": base,
                         "decode_ms_per_token": base / 2, "total_ms": base * 1.6, "error": None})
    return pd.DataFrame(rows)


def test_show_latency_table(tmp_path):
    path = tmp_path / "latency.parquet"
    write_parquet_atomic(path, latency_rows(), {"device": "Test CPU", "dtype": "float32"})
    text = show(path, top=2)
    assert "device: Test CPU" in text and "median latency (ms) by tier:" in text
    assert "by num_blocks" in text and "by top_k" in text
    fastest = text.split("fastest 2 configurations")[1].split("slowest")[0]
    slowest = text.split("slowest 2 configurations:")[1]
    assert "low/k4/b12" in fastest and "high/k8/b16" in slowest and "high/k8/b16" not in fastest
    assert "12 configurations" in text and "0 error rows" in text


def test_show_other_table_and_missing_file(tmp_path, capsys):
    path = tmp_path / "other.parquet"
    write_parquet_atomic(path, pd.DataFrame({"sample_id": [1, 2], "score": [0.5, 1.0]}))
    assert "sample_id" in show(path)
    assert main(["show", str(tmp_path / "missing.parquet")]) == 2
    assert "not found" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    path = tmp_path / "latency.parquet"
    write_parquet_atomic(path, latency_rows())
    out = subprocess.run([sys.executable, "-m", "knobctl", "show", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert "fastest 5 configurations" in out


def test_show_accuracy_table(tmp_path):
    rows = []
    for i in range(4):
        for k in KnobGrid.from_params({"top_k": [4, 8], "num_blocks": [12, 16]}).configs():
            score = 1.0 if (k.tier == "high" or i == 0) else 0.0
            rows.append({"sample_id": f"s{i}", "question_type": "shape" if i % 2 else "color", "config": k.label,
                         **k.as_dict(), "prediction": "x", "score": score, "input_tokens": 5, "output_tokens": 2,
                         "error": None})
    path = tmp_path / "rollouts.parquet"
    write_parquet_atomic(path, pd.DataFrame(rows), {"split": "val", "samples": 4})
    text = show(path, top=2)
    assert "split: val" in text and "mean VQA score by tier:" in text and "by question type and tier" in text
    by_tier = text.split("mean VQA score by tier:")[1].split("mean VQA score by top_k")[0]
    assert [line.split()[0] for line in by_tier.strip().splitlines()[2:]] == ["low", "medium", "high"]
    assert by_tier.strip().splitlines()[-1].split() == ["high", "1.00"] and "0.25" in by_tier
    assert "4 samples x 12 configurations, 0 error rows, per-sample oracle 1.0000" in text
