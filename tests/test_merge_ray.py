"""merge with its units scored in Ray tasks (`--workers`, `--address`) writes what the
in-process merge writes, bit for bit: every array of the store, every attribute but the
time stamp, the --json report and the printed tables.

The stores are real heatjob stores (factories.make_store) with a failed sample and a
map holding Inf, so the rows a merge leaves out are part of what must agree; the Ray is
a real local one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from factories import make_store

from heatjob.eval import merge as merge_module
from heatjob.eval import merge_tasks
from heatjob.store.layout import open_store

HEATJOB = [sys.executable, "-m", "heatjob.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([*HEATJOB, *args], capture_output=True, text=True, env=env, timeout=600)


def awkward_store(path, shard: int = 4):
    """A finished store of several units, a failed sample and one map with an Inf."""
    root = make_store(path, n_samples=24, shard=shard)
    failed = np.zeros(root["samples/id"].shape[0], bool)
    failed[3] = True
    root["samples/failed"][:] = failed
    maps = root["heatmaps/EpsilonPlusFlat"][:]
    rows_sample = root["rows/sample"][:]
    maps[rows_sample == 3] = np.nan
    maps[int(np.flatnonzero(rows_sample != 3)[-1]), 2, 5] = np.inf
    root["heatmaps/EpsilonPlusFlat"][:] = maps
    return root


def arrays_of(path) -> dict[str, zarr.Array]:
    root = zarr.open_group(str(path), mode="r")
    return {name: a for name, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}


def without_time(attrs) -> dict:
    attrs = json.loads(json.dumps(dict(attrs)))
    attrs.get("merged", {}).pop("at", None)
    return attrs


def assert_same_store(a, b) -> None:
    """Every array equal in shape, dtype, values (NaN where NaN) and attributes; the root
    attributes equal but for merged.at."""
    left, right = arrays_of(a), arrays_of(b)
    assert sorted(left) == sorted(right)
    assert any(name.startswith("metrics/") for name in left)
    for name, array in left.items():
        other = right[name]
        assert (array.shape, array.dtype) == (other.shape, other.dtype), name
        assert array.metadata.dimension_names == other.metadata.dimension_names, name
        assert dict(array.attrs) == dict(other.attrs), name
        np.testing.assert_array_equal(array[...], other[...], err_msg=name, strict=True)
    root_a, root_b = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert "merged" in root_a.attrs
    assert without_time(root_a.attrs) == without_time(root_b.attrs)


def assert_same_values(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        for key, values in want[name].items():
            np.testing.assert_array_equal(got[name][key], values, err_msg=key, strict=True)


def test_tasks_scored_in_process_give_the_in_process_values(tmp_path):
    """The task split and its reduction, without Ray: any number of tasks, each unit in
    exactly one, the values those of merge.score_store bit for bit."""
    awkward_store(tmp_path / "s.zarr", shard=4)
    root, info = open_store(str(tmp_path / "s.zarr"))
    geometry = merge_module.row_geometry(root)
    want = merge_module.score_store(root, info, geometry, progress=False)
    blocks = list(merge_module.unit_blocks(root, info, geometry))
    assert len(blocks) >= 6
    names = merge_module.source_names(info)
    for tasks in (1, 2, 3, len(blocks), 4 * len(blocks)):
        work = merge_tasks.plan_tasks(info.path, geometry, blocks, tasks)
        units = [u.index for t in work for u in t.units]
        assert units == [unit.index for unit, _ in blocks], tasks
        assert sum(t.n_rows for t in work) == len(geometry.rows)
        assert len(work) <= max(1, tasks) * merge_tasks.TASKS_PER_WORKER
        got = merge_module.join_blocks(names, [merge_tasks.score_task(t) for t in work])
        assert_same_values(got, want)


def test_a_task_carries_only_its_own_rows(tmp_path):
    awkward_store(tmp_path / "s.zarr", shard=4)
    root, info = open_store(str(tmp_path / "s.zarr"))
    geometry = merge_module.row_geometry(root)
    blocks = list(merge_module.unit_blocks(root, info, geometry))
    work = merge_tasks.plan_tasks(info.path, geometry, blocks, tasks=2)
    assert len(work) > 1
    start = 0
    for task in work:
        rows = geometry.rows[start : start + task.n_rows]
        np.testing.assert_array_equal(task.geometry.rows, rows)
        assert len(task.geometry.boxes) == task.n_rows
        assert task.geometry.ground_truth == {} and len(task.geometry.pool) == 0
        offset = 0
        for unit, size in zip(task.units, task.sizes, strict=True):
            own = rows[offset : offset + size]
            assert size and unit.row_start <= own.min() and own.max() < unit.row_stop
            offset += size
        start += task.n_rows
    assert os.path.isabs(work[0].path)


def test_workers_below_one_and_a_dead_address_are_one_line_and_leave_the_results(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, n_samples=8)
    merge_module.merge(str(path), progress=False, resamples=0)
    before = without_time(zarr.open_group(str(path), mode="r").attrs)
    result = run("merge", str(path), "--workers", "0", "--quiet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "heatjob: error: --workers must be at least 1, got 0"
    assert without_time(zarr.open_group(str(path), mode="r").attrs) == before
    result = run("merge", str(path), "--address", "127.0.0.1:1", "--quiet")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "heatjob: error: cannot reach the Ray cluster at 127.0.0.1:1 (nothing answers there)"
    ]
    assert without_time(zarr.open_group(str(path), mode="r").attrs) == before


def test_merge_without_workers_never_imports_ray(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, n_samples=8)
    code = (
        "import sys\n"
        "from heatjob.cli import app\n"
        f"try:\n    app(['merge', {str(path)!r}, '--quiet', '--bootstrap', '0'])\n"
        "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "print('ray' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "metrics" in zarr.open_group(str(path), mode="r").attrs


@pytest.mark.slow
def test_cli_merge_with_two_workers_writes_the_in_process_store_bit_for_bit(tmp_path):
    awkward_store(tmp_path / "orig.zarr", shard=4)
    local, on_ray = tmp_path / "local.zarr", tmp_path / "ray.zarr"
    shutil.copytree(tmp_path / "orig.zarr", local)
    shutil.copytree(tmp_path / "orig.zarr", on_ray)
    common = ["--bootstrap", "200", "--per-class", "--by-size", "--quiet"]
    a = run("merge", str(local), "--json", str(tmp_path / "local.json"), *common)
    assert a.returncode == 0, a.stderr
    b = run("merge", str(on_ray), "--json", str(tmp_path / "ray.json"), "--workers", "2", *common)
    assert b.returncode == 0, b.stderr
    assert_same_store(local, on_ray)
    assert (tmp_path / "local.json").read_text() == (tmp_path / "ray.json").read_text()
    assert a.stdout == b.stdout
    assert "1 rows with NaN or Inf" in a.stdout  # the awkward rows are in what agrees


@pytest.mark.slow
def test_the_driver_reads_no_heatmap_and_a_second_merge_agrees(tmp_path, monkeypatch):
    """In a Ray merge the heatmaps are read in the tasks only: reading one in the driver
    fails here. With --address alone, merged again, the store is the same again."""
    awkward_store(tmp_path / "s.zarr", shard=4)
    shutil.copytree(tmp_path / "s.zarr", tmp_path / "local.zarr")
    want = merge_module.merge(str(tmp_path / "local.zarr"), progress=False, resamples=100)

    def no_heatmaps_here(*args, **kwargs):
        raise AssertionError("the driver read heatmaps")

    monkeypatch.setattr(merge_module, "block_maps", no_heatmaps_here)
    from heatjob.job import runner

    started = runner.connect(None)
    try:
        got = merge_tasks.merge_on_ray(
            str(tmp_path / "s.zarr"), 3, None, progress=False, resamples=100
        )
        assert got.metrics == want.metrics and got.intervals == want.intervals
        assert got.per_class == want.per_class and got.by_size == want.by_size
        assert got.notes == want.notes
        assert_same_store(tmp_path / "local.zarr", tmp_path / "s.zarr")
        # --address alone: as many tasks as the cluster has CPUs
        address = runner.ray.get_runtime_context().gcs_address
        merge_tasks.merge_on_ray(
            str(tmp_path / "s.zarr"), None, address, progress=False, resamples=100
        )
        assert_same_store(tmp_path / "local.zarr", tmp_path / "s.zarr")
    finally:
        if started:
            runner.shutdown()
