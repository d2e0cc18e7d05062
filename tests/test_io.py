"""Atomic outputs: a folder swapped in whole, and what a killed swap leaves behind put right."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from knobctl.io import atomic_dir, read_provenance, recover_dir, round4, write_parquet_atomic


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ck"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed half way")
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folder left


def test_recover_dir_puts_back_the_folder_a_killed_swap_moved_away(tmp_path):
    target = tmp_path / "ck"
    (tmp_path / ".ck.old.abc").mkdir()
    (tmp_path / ".ck.old.abc" / "x").mkdir()
    (tmp_path / ".ck.old.abc" / "x" / "state.json").write_text("{}")  # the previous checkpoint, moved aside
    (tmp_path / ".ck.def").mkdir()  # the new one, never renamed into place
    recover_dir(target)
    assert (target / "state.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    recover_dir(target)  # nothing to do the second time
    assert (target / "state.json").exists()
    recover_dir(tmp_path / "missing" / "ck")  # no parent: nothing to recover


def test_parquet_carries_provenance_and_numbers_round_to_four_places(tmp_path):
    write_parquet_atomic(tmp_path / "t.parquet", pd.DataFrame({"a": [1, 2]}), {"model": "m", "seed": 0})
    assert read_provenance(tmp_path / "t.parquet") == {"model": "m", "seed": 0}
    assert pd.read_parquet(tmp_path / "t.parquet")["a"].tolist() == [1, 2]
    assert round4(0.123456) == 0.1235 and isinstance(round4(os.cpu_count() or 1), float)


def test_an_output_set_lands_whole_or_not_at_all(tmp_path):

    import pytest

    from knobctl.io import output_set, write_json

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("old model")
    (tmp_path / "metrics.json").write_text('"old metrics"')
    with pytest.raises(OSError, match="disk full"), output_set() as outs:
        (outs.dir(tmp_path / "model") / "w.txt").write_text("new model")
        outs.file(tmp_path / "metrics.json")
        raise OSError("disk full")  # the second output fails while it is written
    assert (tmp_path / "model" / "w.txt").read_text() == "old model"  # the first was not put in place either
    assert (tmp_path / "metrics.json").read_text() == '"old metrics"'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model"]  # no temporaries left
    with output_set() as outs:
        (outs.dir(tmp_path / "model") / "w.txt").write_text("new model")
        write_json(outs.file(tmp_path / "metrics.json"), {"a": 1})
    assert (tmp_path / "model" / "w.txt").read_text() == "new model" and "a" in (tmp_path / "metrics.json").read_text()


def test_a_read_only_destination_puts_none_of_the_set_in_place(tmp_path):
    import os

    import pytest

    from knobctl.io import output_set, write_json

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("new model")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: nothing to test there
            pytest.skip("running as a user that can write a read-only folder")
        with pytest.raises(PermissionError), output_set() as outs:
            (outs.dir(tmp_path / "model") / "w.txt").write_text("newer model")
            write_json(outs.file(ro / "metrics.json"), {"a": 1})
        assert (tmp_path / "model" / "w.txt").read_text() == "new model"  # the one before
    finally:
        ro.chmod(0o755)
