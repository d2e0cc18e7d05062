"""A profile's run: error rows, warm-up, resume, device tags and the checks of the merged rows."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from knobctl.knobs import KnobConfig, KnobGrid
from knobctl.latency.profile_run import (
    LocalProfiler,
    ProfilePlan,
    Profiler,
    check_complete,
    check_one_device,
    run_profile,
)
from knobctl.latency.profiling import ROW_COLUMNS, Case, DeviceTag, ProfileParams, Timing, cases_for, schedule
from knobctl.latency.stats import summarize
from knobctl.params import InputError
from knobctl.parts import PartStore

CONFIGS = [KnobConfig(t, k, b) for t in ("low", "high") for k in (4, 8) for b in (12, 16)]


def fake_measure(calls: list, fail_tier: str | None = None, stop_after: int | None = None):
    def measure(case: Case) -> Timing:
        calls.append(case.key)
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        if case.knobs.tier == fail_tier:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        k = case.knobs
        return Timing(1.0 + k.top_k / 10, 2.0 + k.num_blocks / 10 + case.text_tokens / 100, 0.5 + k.num_blocks / 20)

    return measure


def profile_with(measure, store, cases, rounds=2, warmup=0):
    return run_profile(measure, cases, rounds=rounds, warmup_rounds=warmup, seed=0, store=store,
                       input_tokens=lambda c: c.text_tokens + 3, visual_tokens=lambda c: 1, batch_size=1,
                       progress=False)


def test_failed_configuration_becomes_error_rows_and_profiling_goes_on(tmp_path):
    cases = cases_for(CONFIGS, [4], [3])
    calls: list = []
    rows = profile_with(fake_measure(calls, fail_tier="low"), PartStore(tmp_path, 4, ROW_COLUMNS), cases)
    assert len(rows) == 2 * len(cases) and list(rows.columns) == list(ROW_COLUMNS)
    bad = rows[rows["tier"] == "low"]
    assert bad["error"].str.startswith("RuntimeError: CUDA out of memory").all() and bad["vision_ms"].isna().all()
    good = rows[rows["tier"] == "high"]
    assert good["error"].isna().all() and (good["total_ms"] > 0).all()
    row = good[good["config"] == "high/k8/b16"].iloc[0]
    assert row["total_ms"] == pytest.approx(1.8 + 3.64 + 2 * 1.3)
    summary = summarize(rows)
    low = summary[summary["tier"] == "low"]
    assert (low["repeats"] == 0).all() and (low["errors"] == 2).all()


def test_warmup_is_not_recorded(tmp_path):
    cases = cases_for(CONFIGS[:2], [4], [2])
    calls: list = []
    rows = profile_with(fake_measure(calls), PartStore(tmp_path, 50, ROW_COLUMNS), cases, rounds=2, warmup=1)
    assert len(calls) == 3 * len(cases) and len(rows) == 2 * len(cases)
    assert sorted(rows["round"].unique()) == [0, 1]


def test_interrupted_run_resumes_to_the_same_table(tmp_path):
    cases = cases_for(CONFIGS, [4, 8], [2])
    full = profile_with(fake_measure([]), PartStore(tmp_path / "a", 5, ROW_COLUMNS), cases, rounds=3)

    store = PartStore(tmp_path / "b", 5, ROW_COLUMNS)
    with pytest.raises(KeyboardInterrupt):
        profile_with(fake_measure([], stop_after=23), store, cases, rounds=3)
    kept = store.read()
    assert len(kept) == 20  # four flushed parts survive; the three unflushed rows are lost
    calls: list = []
    resumed = profile_with(fake_measure(calls), PartStore(tmp_path / "b", 5, ROW_COLUMNS), cases, rounds=3)
    assert len(calls) == len(full) - 20  # nothing already measured is measured again
    pd.testing.assert_frame_equal(resumed, full)


def test_a_resumed_profile_with_a_damaged_part_is_refused_by_name(tmp_path):
    """A part of an interrupted run whose latency turned negative (a damaged file, another tool's edit) is named at
    the merge, not summarised into the profile."""
    cases = cases_for(CONFIGS, [4, 8], [2])
    store = PartStore(tmp_path, 5, ROW_COLUMNS)
    with pytest.raises(KeyboardInterrupt):
        profile_with(fake_measure([], stop_after=23), store, cases, rounds=3)
    part = sorted(tmp_path.glob("part-*.parquet"))[1]
    damaged = pd.read_parquet(part)
    damaged.loc[0, "vision_ms"] = -1.0
    damaged.to_parquet(part)
    with pytest.raises(InputError, match=r"profile rows table\): column 'vision_ms': 1 of 48 rows .*-1.0.*delete .* to measure afresh"):
        profile_with(fake_measure([]), PartStore(tmp_path, 5, ROW_COLUMNS), cases, rounds=3)


def test_a_profile_missing_or_repeating_a_measurement_is_refused():
    cases = cases_for([KnobConfig("low", 4, 12), KnobConfig("high", 8, 16)], [3], [2])
    keys = [(r, *c.key) for r, _, c in schedule(cases, 2, seed=0)]
    rows = pd.DataFrame(keys, columns=["round", "config", "text_tokens", "output_tokens"])
    check_complete(rows, cases, 2, 0, "here")
    with pytest.raises(InputError, match=r"holds 3 rows for 4 scheduled measurements: 1 missing"):
        check_complete(rows.iloc[1:], cases, 2, 0, "here")
    with pytest.raises(InputError, match=r"1 repeated"):
        check_complete(pd.concat([rows, rows.iloc[:1]]), cases, 2, 0, "here")


def test_rows_carry_the_device_that_measured_them(tmp_path):
    cases = cases_for(CONFIGS[:2], [4], [2])
    rows = profile_with(fake_measure([]), PartStore(tmp_path, 50, ROW_COLUMNS), cases)
    here = DeviceTag.here()
    assert list(rows.columns) == list(ROW_COLUMNS)
    assert (rows["device"] == here.device).all() and (rows["host"] == here.host).all() and (rows["worker"] == 0).all()
    assert here.device.endswith("threads)")  # a CPU's clock depends on its torch threads: part of its name


def test_rows_of_two_device_names_are_never_merged(tmp_path):
    """Round 0 measured on one device, round 1 on another (a resumed run elsewhere): the merge is refused, naming
    both devices and the fix."""
    plan = ProfilePlan(tuple(cases_for(CONFIGS[:2], [4], [2])), rounds=2, warmup_rounds=0, seed=0)
    store = PartStore(tmp_path, 50, ROW_COLUMNS)
    for rnd, name in enumerate(["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]):
        profiler = Profiler(fake_measure([]), plan, lambda c: 7, lambda c: 1, 1, tag=DeviceTag(name, "node", rnd))
        for r, pos, case in plan.pending(store.done_keys(["round", "config", "text_tokens", "output_tokens"])):
            if r == rnd:
                store.append(profiler.row(r, pos, case))
        store.flush()
    with pytest.raises(InputError, match=r"2 devices: NVIDIA H100 80GB HBM3 \(2 rows\), NVIDIA A100-SXM4-80GB "
                                         r"\(2 rows\).*accelerator_type"):
        plan.finish(store)
    check_one_device(store.read().query("worker == 0"), tmp_path)  # one name: merged


def test_the_warm_up_runs_once_per_profiler():
    """A Ray worker warms up before its first round only; the local run, once before measuring."""
    plan = ProfilePlan(tuple(cases_for(CONFIGS[:3], [4], [2])), rounds=2, warmup_rounds=2, seed=0)
    calls: list = []
    profiler = Profiler(fake_measure(calls), plan, lambda c: 7, lambda c: 1, 1)
    profiler.warm_up(progress=False)
    profiler.warm_up(progress=False)
    assert len(calls) == 2 * 3
    assert calls == [c.key for _, _, c in schedule(plan.cases, 2, 0, stream=1)]


def test_local_profiler_describes_its_runtime_and_measures_the_grid(tiny_rt, tmp_path):
    grid = KnobGrid(tiers=("low", "high"), top_k=(4,), num_blocks=(12,))
    p = ProfileParams(source="tiny", device="cpu", text_tokens=(3,), output_tokens=(2,), rounds=2, warmup_rounds=0)
    threads = torch.get_num_threads()
    try:
        with LocalProfiler(tiny_rt, grid, p, seed=0, worker=3) as local:
            info = local.describe()
            rows = local.run(PartStore(tmp_path, 50, ROW_COLUMNS), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert info["device_type"] == "cpu" and info["tiers"] == tiny_rt.tier_table() and info["worker"] == 3
    assert info["workers"] == [{"worker": 3, "host": info["host"], "device": info["device"]}]
    assert len(rows) == 2 * 2 and (rows["worker"] == 3).all() and (rows["total_ms"] > 0).all()
    assert sorted(rows["visual_tokens"].unique()) == sorted(tiny_rt.visual_tokens(t) for t in ("low", "high"))


def test_a_run_on_another_device_than_the_stored_rows_is_refused_before_measuring(tmp_path):
    """Say round 0 was stored with 2 torch threads and the run resumes with 1: another clock, refused at once."""
    plan = ProfilePlan(tuple(cases_for(CONFIGS[:2], [4], [2])), rounds=2, warmup_rounds=1, seed=0)
    store = PartStore(tmp_path, 50, ROW_COLUMNS)
    first = Profiler(fake_measure([]), plan, lambda c: 7, lambda c: 1, 1, tag=DeviceTag("AMD EPYC (2 threads)", "h"))
    first.run(store, progress=False)
    calls: list = []
    again = Profiler(fake_measure(calls), ProfilePlan(plan.cases, 3, 1, 0), lambda c: 7, lambda c: 1, 1,
                     tag=DeviceTag("AMD EPYC (1 threads)", "h"))
    with pytest.raises(InputError, match=r"holds rows measured on AMD EPYC \(2 threads\); this run measures on "
                                         r"AMD EPYC \(1 threads\)"):
        again.run(store, progress=False)
    assert calls == []  # not even the warm-up ran
    same = Profiler(fake_measure(calls), ProfilePlan(plan.cases, 3, 0, 0), lambda c: 7, lambda c: 1, 1,
                    tag=DeviceTag("AMD EPYC (2 threads)", "h"))
    assert len(same.run(store, progress=False)) == 3 * 2 and len(calls) == 2  # the same device resumes
