"""`knobctl compare`: DVC experiments ranked on the headline, with intervals and a noise verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from knobctl.cli import main
from knobctl.validate.compare import Entry, headline_entry, rank, render

KEY = "mean_gain_over_lookup_within_budget"


def validate_metrics(gain: float, low: float, high: float) -> dict:
    return {"headline": {KEY: gain, f"{KEY}_ci95_low": low, f"{KEY}_ci95_high": high}}


def test_neighbours_whose_intervals_overlap_are_within_noise():
    a = headline_entry("a", None, validate_metrics(0.05, 0.03, 0.07), "validate")
    b = headline_entry("b", None, validate_metrics(0.04, 0.02, 0.06), "validate")
    c = headline_entry("c", None, validate_metrics(0.00, -0.01, 0.01), "validate")
    none = headline_entry("old", None, {"headline": {"mean_gain_over_static": 0.1}}, "validate")
    assert [e.name for e in rank([c, none, a, b])] == ["a", "b", "c", "old"]
    text = render([c, none, a, b], "validate")
    assert "| 1 | a | +5.00 | [+3.00, +7.00] | within noise of b |" in text
    assert "| 2 | b | +4.00 | [+2.00, +6.00] | above c beyond noise |" in text
    assert "| 4 | old | - | - | not measured |" in text
    assert Entry("x", None, 0.1, None, None).overlaps(a)  # no interval: never called beyond noise


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


@pytest.mark.slow
def test_compare_reads_every_experiment_through_dvc(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "metrics").mkdir(parents=True)
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    metrics = repo / "metrics/validate.json"
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/validate.json\n")
    metrics.write_text(json.dumps(validate_metrics(0.01, -0.01, 0.03)))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "baseline")
    for name, m in (("gamma4", validate_metrics(0.05, 0.035, 0.065)), ("gamma0", validate_metrics(0.02, 0.0, 0.03))):
        metrics.write_text(json.dumps(m))
        _dvc(repo, "exp", "save", "-n", name)
    _git(repo, "checkout", "--", "metrics/validate.json")
    assert main(["compare", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | gamma4 | +5.00 | [+3.50, +6.50] | above gamma0 beyond noise |" in out
    assert "| 2 | gamma0 | +2.00 | [+0.00, +3.00] | within noise of" in out  # the workspace and the baseline: +1
    assert out.count("| +1.00 | [-1.00, +3.00] |") == 2
    assert main(["compare", "gamma0", "nosuchrev", "--repo", str(repo)]) == 2
    assert "nosuchrev: cannot read metrics/validate.json" in capsys.readouterr().err
