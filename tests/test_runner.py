"""Worker sizing from what the cluster has: never a request that cannot be scheduled."""

from __future__ import annotations

import pytest

from heatjob.errors import HeatjobError, SpecError
from heatjob.job import runner


@pytest.fixture
def cluster(monkeypatch):
    def set_resources(**resources):
        monkeypatch.setattr(runner.ray, "cluster_resources", lambda: dict(resources))

    return set_resources


def test_cpu_only_cluster_gets_cpu_workers_one_per_two_cpus(cluster):
    cluster(CPU=8.0)
    plan = runner.plan_workers(0, "auto", n_units=100)
    assert (plan.workers, plan.num_gpus, plan.num_cpus, plan.threads) == (4, 0.0, 2.0, 2)


def test_gpus_give_one_worker_each(cluster):
    cluster(CPU=16.0, GPU=2.0)
    plan = runner.plan_workers(0, "auto", n_units=100)
    assert (plan.workers, plan.num_gpus) == (2, 1.0)
    assert plan.num_cpus <= 1.0


def test_more_workers_than_gpus_share_them(cluster):
    cluster(CPU=16.0, GPU=1.0)
    plan = runner.plan_workers(4, "auto", n_units=100)
    assert (plan.workers, plan.num_gpus) == (4, 0.25)


def test_no_more_workers_than_units_and_device_cpu_ignores_gpus(cluster):
    cluster(CPU=2.0, GPU=1.0)
    plan = runner.plan_workers(8, "cpu", n_units=3)
    assert (plan.workers, plan.num_gpus) == (3, 0.0)
    assert plan.num_cpus == pytest.approx(2 / 3, abs=1e-3)


def test_cuda_without_gpu_is_a_clear_error_not_a_hang(cluster):
    cluster(CPU=2.0)
    with pytest.raises(SpecError, match="no GPU"):
        runner.plan_workers(0, "cuda", n_units=3)


def test_an_unreachable_cluster_is_a_clear_error_not_minutes_of_retries(monkeypatch):
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)

    def must_not_start(*args, **kwargs):
        raise AssertionError("ray.init must not be called for an address nobody answers")

    monkeypatch.setattr(runner.ray, "init", must_not_start)
    with pytest.raises(HeatjobError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        runner.connect("127.0.0.1:1")
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    with pytest.raises(HeatjobError, match="ray://127.0.0.1:1"):
        runner.connect(None)


def test_num_gpus_per_worker_fractional_packs_workers_onto_gpus(cluster):
    cluster(CPU=16.0, GPU=2.0)
    plan = runner.plan_workers(0, "auto", n_units=100, num_gpus=0.5)
    assert (plan.workers, plan.num_gpus) == (4, 0.5)
    # more workers than fit would leave some waiting for a GPU forever: capped
    plan = runner.plan_workers(8, "auto", n_units=100, num_gpus=0.5)
    assert (plan.workers, plan.num_gpus) == (4, 0.5)
    plan = runner.plan_workers(0, "auto", n_units=100, num_gpus=2.0)
    assert (plan.workers, plan.num_gpus) == (1, 2.0)


def test_num_gpus_is_ignored_without_gpus_and_refused_beyond_the_cluster(cluster):
    cluster(CPU=4.0)
    plan = runner.plan_workers(0, "auto", n_units=100, num_gpus=0.5)
    assert (plan.workers, plan.num_gpus) == (2, 0.0)
    cluster(CPU=4.0, GPU=1.0)
    with pytest.raises(SpecError, match=r"num_gpus = 2.0 per worker, but the cluster has 1"):
        runner.plan_workers(0, "auto", n_units=100, num_gpus=2.0)


def test_num_gpus_in_the_spec_is_a_non_negative_number():
    from heatjob.spec import parse_spec

    base = {
        "dataset": {"kind": "synthetic"},
        "model": {"arch": "small_cnn"},
        "attribution": {"composites": ["EpsilonPlus"]},
        "store": {"path": "out.zarr"},
    }
    assert parse_spec({**base, "run": {"num_gpus": 0.25}}).run.num_gpus == 0.25
    assert parse_spec({**base, "run": {"num_gpus": 1}}).run.num_gpus == 1.0
    with pytest.raises(SpecError, match=r"\[run\] num_gpus must be 0 \(automatic\) or positive"):
        parse_spec({**base, "run": {"num_gpus": -1}})
    with pytest.raises(SpecError, match=r"\[run\] num_gpus must be a number, got True"):
        parse_spec({**base, "run": {"num_gpus": True}})


def test_map_tasks_runs_in_ray_tasks_in_order_and_raises_heatjob_errors_as_themselves():
    def _square_or_refuse(x: int) -> int:  # local: Ray ships it by value to the tasks
        if x < 0:
            raise SpecError(f"value {x} refused")
        return x * x

    started = runner.connect(None)
    try:
        seen = []
        out = runner.map_tasks(
            _square_or_refuse, list(range(7)), tasks=2, on_result=lambda i, r: seen.append((i, r))
        )
        assert out == [i * i for i in range(7)]
        assert sorted(seen) == [(i, i * i) for i in range(7)]
        assert runner.map_tasks(_square_or_refuse, [1, 2], tasks=1, keep=False) == [None, None]
        with pytest.raises(SpecError, match="value -3 refused"):
            runner.map_tasks(_square_or_refuse, [1, -3, 2], tasks=2)
    finally:
        if started:
            runner.shutdown()
