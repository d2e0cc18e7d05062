"""PartStore: incremental part files, resume keys, clear."""

from __future__ import annotations

from knobctl.parts import PartStore


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
