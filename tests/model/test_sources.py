"""The stages' --help lists every family and preset from the registries, and a stage does not load them before
it checks its params."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from knobctl.model.families import FAMILIES
from knobctl.model.presets import PRESETS
from knobctl.model.sources import SOURCES, model_sources, source_parser

ROOT = Path(__file__).resolve().parents[2]


def test_help_writes_every_family_and_preset_where_the_placeholder_stands(capsys):
    ap = source_parser(f"Stage x.\n\nsource is\n{SOURCES}.\n")
    ap.add_argument("--model", help=model_sources())
    ap.add_argument("--out", help="where it goes")
    with pytest.raises(SystemExit) as end:
        ap.parse_args(["--help"])
    out = capsys.readouterr().out
    assert end.value.code == 0 and SOURCES not in out
    flat = " ".join(out.split())  # the list is wrapped
    for family in FAMILIES.values():
        if family.backend != "knobctl":
            assert f"{family.short_name} ({family.model_type})" in flat
    for name in PRESETS:
        assert flat.count(name) == 2, name  # once in the description, once in --model's help
    assert "where it goes" in flat


STAGES = ["validate", "eval_base", "accuracy_table", "block_importance", "profile_latency", "train_base"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_checks_its_params_before_loading_torch(stage, tmp_path):
    code = (f"import runpy, sys\nsys.argv = ['{stage}', '--params', 'missing.yaml']\ntry:\n"
            f"    runpy.run_path({str(ROOT / 'stages' / f'{stage}.py')!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    print('torch' in sys.modules, e.code)")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.stdout.split()[-2:] == ["False", "2"], done.stdout + done.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_help_lists_the_sources(stage, capsys):
    main = runpy.run_path(str(ROOT / "stages" / f"{stage}.py"))["main"]
    with pytest.raises(SystemExit) as end:
        main(["--help"])
    out = capsys.readouterr().out
    assert end.value.code == 0 and SOURCES not in out and "qwen3-vl-30b-a3b-shape" in out
