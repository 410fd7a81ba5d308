"""heatjob on a real two-node Ray cluster (loopback), by `--address` and by `ray job submit`.

The cluster is started here (`ray start --head`, then `ray start --address` with
a resource of its own) and stopped afterwards by killing exactly its processes.
Each node has one CPU and the job asks for two one-CPU workers, so Ray must place
one on each; the store's per-unit records (`units/node`, `units/pid`) show which
node wrote which unit, and the heatmaps are checked against the same units
recomputed in this process.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from ray_cluster import start_two_nodes

from heatjob.job.plan import owned_samples
from heatjob.job.worker import UnitWorker
from heatjob.models import SmallCNN
from heatjob.spec import load_spec
from heatjob.store.layout import open_store
from heatjob.store.units import store_units

pytestmark = pytest.mark.slow

HEATJOB = [sys.executable, "-m", "heatjob.cli"]
COMPOSITES = ["EpsilonPlusFlat", "cmp-a2b1-flat"]


@pytest.fixture(scope="module")
def cluster():
    cluster = start_two_nodes()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def node_ids(cluster) -> set[str]:
    nodes = cluster.nodes()
    assert len(nodes) == 2
    assert sum("second" in resources for resources in nodes.values()) == 1
    return set(nodes)


def write_spec(path: Path, store: Path) -> Path:
    """A small synthetic job whose model is a saved checkpoint, the same in every process."""
    checkpoint = path.with_name("model.pt")
    torch.manual_seed(0)
    torch.save(SmallCNN(num_classes=6).state_dict(), checkpoint)
    path.write_text(
        "\n".join(
            [
                "[dataset]",
                'kind = "synthetic"',
                "num_samples = 12",
                "image_size = 32",
                "[model]",
                'arch = "small_cnn"',
                "num_classes = 6",
                f'checkpoint = "{checkpoint}"',
                "[attribution]",
                f"composites = {json.dumps(COMPOSITES)}",
                "[store]",
                f'path = "{store}"',
                'dtype = "float32"',
                "[run]",
                "batch_size = 8",
                "shard_size = 4",
                "workers = 2",
            ]
        )
        + "\n"
    )
    return path


def assert_both_nodes_wrote_it(store_path: Path, node_ids: set[str], spec_path: Path) -> None:
    store = zarr.open_group(str(store_path), mode="r")
    assert store["units/done"][:].all()
    nodes = store["units/node"][:].tolist()
    assert set(nodes) == node_ids  # every unit by a node of this cluster, and both took part
    pids = store["units/pid"][:]
    assert len(set(pids.tolist())) == 2 and (pids > 0).all()
    assert set(store["units/host"][:].tolist()) == {socket.gethostname()}
    # one pid per node: each node's worker process wrote all of that node's units
    assert len({(n, p) for n, p in zip(nodes, pids.tolist(), strict=True)}) == 2

    # the same units, recomputed here without Ray, give the same heatmaps and logits
    copy = store_path.with_name(store_path.name + ".local")
    shutil.copytree(store_path, copy)
    spec = load_spec(spec_path)
    root, info = open_store(str(copy))
    rows_sample, rows_target = root["rows/sample"][:], root["rows/target"][:]
    worker = UnitWorker(spec.to_dict(), str(copy), num_classes=6, threads=1)
    for name in COMPOSITES:
        zarr.open_group(str(copy), mode="r+")[f"heatmaps/{name}"][:] = np.nan
    logits = np.full_like(store["samples/logits"][:], np.nan)
    for unit in store_units(root, info):
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, rows_sample, len(logits))
        result = worker.run_unit(unit, rows_sample[rows], rows_target[rows], owned)
        logits[owned.start : owned.stop] = result.logits
    local = zarr.open_group(str(copy), mode="r")
    for name in COMPOSITES:
        np.testing.assert_allclose(
            store[f"heatmaps/{name}"][:], local[f"heatmaps/{name}"][:], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(store["samples/logits"][:], logits, rtol=1e-5, atol=1e-6)


def test_submit_with_address_runs_on_both_nodes(cluster, node_ids, tmp_path):
    spec = write_spec(tmp_path / "job.toml", tmp_path / "out.zarr")
    result = subprocess.run(
        [*HEATJOB, "submit", str(spec), "--address", cluster.address, "-q"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "2 CPU workers" in result.stdout
    assert_both_nodes_wrote_it(tmp_path / "out.zarr", node_ids, spec)
    status = subprocess.run(
        [*HEATJOB, "status", str(tmp_path / "out.zarr"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(status.stdout)["writers"] == {"nodes": 2, "processes": 2}


def test_ray_job_submit_runs_heatjob_on_both_nodes(cluster, node_ids, tmp_path):
    spec = write_spec(tmp_path / "job.toml", tmp_path / "out.zarr")
    # The entrypoint runs on the head node as the job's driver, with RAY_ADDRESS set by Ray.
    entrypoint = f"{sys.executable} -m heatjob.cli submit {spec} -q"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "job", "submit"]
        + ["--address", cluster.dashboard, "--", *entrypoint.split()],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "succeeded" in result.stdout + result.stderr
    assert "units written" in result.stdout  # heatjob's own summary line, from the job's log
    assert_both_nodes_wrote_it(tmp_path / "out.zarr", node_ids, spec)


def test_dry_run_with_address_sizes_workers_from_the_cluster(cluster, tmp_path):
    spec = write_spec(tmp_path / "job.toml", tmp_path / "out.zarr")
    result = subprocess.run(
        [*HEATJOB, "submit", str(spec), "--address", cluster.address, "--dry-run", "-q"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"from the cluster at {cluster.address}: 2 CPUs, 0 GPUs" in result.stdout
    assert "2 CPU workers (1 CPU, 0 GPU, 1 torch thread each)" in result.stdout
    assert not (tmp_path / "out.zarr").exists()
