"""The Ray settings both executors share: their checks, and how many workers a cluster holds (no Ray needed)."""

from __future__ import annotations

import pytest

from knobctl.cluster import RayParams, RayPool
from knobctl.latency.profiling import ProfileParams
from knobctl.params import InputError, ParamsError
from knobctl.table.rollouts import RolloutParams


@pytest.mark.parametrize("section, cls", [("profile_latency", ProfileParams), ("accuracy_table", RolloutParams)])
@pytest.mark.parametrize("bad, word", [
    ({"executor": "dask"}, "executor"),
    ({"ray": {"num_workers": 0}}, r"ray\.num_workers"),
    ({"ray": {"num_gpus_per_worker": -1}}, r"ray\.num_gpus_per_worker"),
    ({"ray": {"accelerator_type": "H100"}}, r"ray\.accelerator_type.*num_gpus_per_worker > 0"),
    ({"ray": {"max_retries": -1}}, r"ray\.max_retries"),
    ({"ray": {"gpus": 1}}, "unknown keys"),
])
def test_bad_ray_settings_name_the_section_and_key(section, cls, bad, word):
    with pytest.raises(ParamsError, match=f"{section}.*{word}"):
        cls.from_params(bad)


def test_the_worker_count_is_what_the_cluster_holds_unless_given():
    s = RayParams()
    assert RayPool._count({"CPU": 16.0}, s, "x") == 16
    assert RayPool._count({"CPU": 16.0}, RayParams(num_cpus_per_worker=4), "x") == 4
    assert RayPool._count({"CPU": 16.0}, RayParams(num_workers=3), "x") == 3
    gpus = {"CPU": 64.0, "GPU": 8.0, "accelerator_type:H100": 1.0}
    assert RayPool._count(gpus, RayParams(num_gpus_per_worker=1, num_cpus_per_worker=4), "x") == 8
    assert RayPool._count(gpus, RayParams(num_gpus_per_worker=2, accelerator_type="H100"), "x") == 4


def test_a_cluster_that_cannot_hold_one_worker_is_refused_with_what_it_has():
    with pytest.raises(InputError, match=r"2.0 CPUs and 0 GPUs: not one worker of profile_latency.ray"):
        RayPool._count({"CPU": 2.0}, RayParams(num_gpus_per_worker=1), "profile_latency.ray")
    with pytest.raises(InputError, match=r"accelerator_type is 'A100'.*its GPU types: H100"):
        RayPool._count({"CPU": 8.0, "GPU": 8.0, "accelerator_type:H100": 1.0},
                       RayParams(num_gpus_per_worker=1, accelerator_type="A100"), "profile_latency.ray")


def test_a_worker_runs_its_own_cpus_threads_where_the_section_says_every_core():
    assert RayParams(num_cpus_per_worker=4).worker_threads(0) == 4
    assert RayParams(num_cpus_per_worker=4).worker_threads(2) == 2
