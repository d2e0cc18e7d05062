"""PartStore: incremental part files, resume keys, clear."""

from __future__ import annotations

import pandas as pd
import pytest

from knobctl.parts import PartStore, PartStoreError


def test_flushes_in_parts_and_reads_back_in_order(tmp_path):
    store = PartStore(tmp_path / "p", flush_every=3, columns=["round", "config", "value"])
    for i in range(7):
        store.append({"round": i // 4, "config": f"c{i}", "value": float(i)})
    assert len(list((tmp_path / "p").glob("part-*.parquet"))) == 2  # 6 rows flushed, 1 buffered
    assert len(store.read()) == 6
    store.flush()
    df = PartStore(tmp_path / "p").read()
    assert df["value"].tolist() == [float(i) for i in range(7)]
    assert store.done_keys(["round", "config"]) == {(i // 4, f"c{i}") for i in range(7)}
    store.clear()
    assert not (tmp_path / "p").exists()


def test_empty_store_has_no_keys(tmp_path):
    store = PartStore(tmp_path / "e", columns=["a"])
    assert store.done_keys(["a"]) == set() and list(store.read().columns) == ["a"]
    store.flush()  # nothing buffered: no empty part file
    assert not list((tmp_path / "e").glob("*.parquet"))


def _rows(store: PartStore, start: int, n: int) -> None:
    for i in range(start, start + n):
        store.append({"round": 0, "config": f"c{i}", "value": float(i)})
    store.flush()


def test_flush_after_a_gap_never_overwrites_a_part(tmp_path, capsys):
    cols = ["round", "config", "value"]
    store = PartStore(tmp_path, flush_every=100, columns=cols)
    for start in (0, 2, 4, 6):
        _rows(store, start, 2)
    (tmp_path / "part-00001.parquet").unlink()  # a damaged part removed by hand
    last = (tmp_path / "part-00003.parquet").read_bytes()
    resumed = PartStore(tmp_path, flush_every=100, columns=cols)
    assert resumed.done_keys(["config"]) == {("c0",), ("c1",), ("c4",), ("c5",), ("c6",), ("c7",)}
    _rows(resumed, 2, 2)  # the lost rows, measured again
    _rows(resumed, 8, 1)
    assert (tmp_path / "part-00003.parquet").read_bytes() == last
    assert sorted(p.name for p in tmp_path.glob("part-*.parquet")) == [
        "part-00000.parquet", "part-00002.parquet", "part-00003.parquet", "part-00004.parquet", "part-00005.parquet"]
    assert sorted(resumed.read()["value"]) == [float(i) for i in range(9)]
    assert "part-00001.parquet" in capsys.readouterr().err  # the gap is named, not silent
    assert resumed.gaps() == [1]
    with pytest.raises(PartStoreError, match=r"1 part file\(s\) missing .*part-00001\.parquet"):
        resumed.read(allow_gaps=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_writer_that_lost_the_race_for_a_number_takes_the_next(tmp_path, monkeypatch):
    store = PartStore(tmp_path, flush_every=100, columns=["round", "config", "value"])
    _rows(store, 0, 1)
    other = PartStore(tmp_path, flush_every=100, columns=["round", "config", "value"])
    listing = store._indexed_parts()
    _rows(other, 1, 1)  # takes part 1 while `store` still believes part 0 is the last
    monkeypatch.setattr(store, "_indexed_parts", lambda: listing)
    _rows(store, 2, 1)
    monkeypatch.undo()
    assert [p.name for p in store._parts()] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert store.read()["config"].tolist() == ["c0", "c1", "c2"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "columns"])
def test_an_unreadable_part_is_named_and_never_merged(tmp_path, damage):
    store = PartStore(tmp_path, flush_every=100, columns=["round", "config", "value"])
    for start in (0, 2, 4):
        _rows(store, start, 2)
    bad = tmp_path / "part-00001.parquet"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a parquet file at all")
    else:
        pd.DataFrame({"x": [1]}).to_parquet(bad)
    with pytest.raises(PartStoreError, match=r"part-00001\.parquet .*(Delete|delete)"):
        store.read()
    with pytest.raises(PartStoreError, match="part-00001"):
        store.done_keys(["config"])
    bad.unlink()  # what the error says to do; the rest is intact
    assert store.read()["config"].tolist() == ["c0", "c1", "c4", "c5"]


def test_parts_sort_by_number_past_five_digits(tmp_path):
    store = PartStore(tmp_path, flush_every=100, columns=["round", "config", "value"])
    _rows(store, 0, 1)
    (tmp_path / "part-00000.parquet").rename(tmp_path / "part-99999.parquet")
    _rows(store, 1, 1)
    assert (tmp_path / "part-100000.parquet").exists()
    assert store.read()["config"].tolist() == ["c0", "c1"]
