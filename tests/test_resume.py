"""Crashes and determinism, done for real: the CLI in its own process, killed with SIGKILL,
a Ray worker killed mid-unit, a shard corrupted on disk.

The truth every run is held to is a run that nothing interrupted: the stores must be equal
bit for bit (heatmaps, logits, targets), whatever was killed and however many workers ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import zarr
from jobrun import (
    done_count,
    heatjob,
    kill_a_worker_mid_unit,
    kill_everything,
    kill_the_driver_mid_job,
    start,
    wait_for,
)
from typer.testing import CliRunner

from heatjob.cli import app
from heatjob.store.records import done_units

pytestmark = pytest.mark.slow

CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "small_cnn_shapes.pt"
COMPOSITES = ("EpsilonPlusFlat", "cmp-a2b1-flat")
COMPARED = ("rows/sample", "rows/target", "samples/logits") + tuple(
    f"heatmaps/{c}" for c in COMPOSITES
)


def write_spec(folder: Path, name: str) -> Path:
    """40 synthetic images, the demo's trained model, shards of 3 rows: ~25 units."""
    spec = folder / f"{name}.toml"
    spec.write_text(
        f"""
[dataset]
kind = "synthetic"
num_samples = 40
seed = 5
image_size = 32
[model]
arch = "small_cnn"
checkpoint = "{CHECKPOINT}"
num_classes = 6
[attribution]
composites = {json.dumps(list(COMPOSITES))}
[store]
path = "{folder / name}.zarr"
dtype = "float32"
[run]
batch_size = 4
shard_size = 3
"""
    )
    return spec


def status(*args: str):
    """`heatjob status` in this process (it starts no Ray; a subprocess would only add the
    seconds of importing torch)."""
    return CliRunner().invoke(app, ["status", *args])


RECORDS = ("units/attempts", "units/checksum", "samples/failed", "samples/failure")


def read(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(store, mode="r")
    return {name: root[name][:] for name in (*COMPARED, "units/done", "units/attempts")}


def assert_same_store(got: dict, expected: dict) -> None:
    for name in COMPARED:
        assert got[name].dtype == expected[name].dtype, name
        assert got[name].tobytes() == expected[name].tobytes(), f"{name} differs"
    assert got["units/done"].all()
    for composite in COMPOSITES:
        assert not np.isnan(got[f"heatmaps/{composite}"]).any()  # no row left unwritten


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run, two workers of one torch thread each: the runs it is compared
    with use one thread per worker too (a convolution's float32 sums may round differently
    with two threads than with one, so bitwise equality holds at equal thread counts)."""
    folder = tmp_path_factory.mktemp("reference")
    spec = write_spec(folder, "ref")
    result = heatjob("submit", str(spec), "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    arrays = read(folder / "ref.zarr")
    assert arrays["units/done"].shape[0] >= 20
    assert (arrays["units/attempts"] == 1).all()
    return {**arrays, "path": folder / "ref.zarr"}


def test_same_spec_same_heatmaps_across_runs_and_worker_counts_and_verify_catches_corruption(
    reference, tmp_path
):
    """Three workers, shards of 3 rows: bitwise the two-worker run. Then every unit's
    checksum checks out, and a flipped byte in one shard file and a rewritten row in
    another are both caught by `status --verify`."""
    spec = write_spec(tmp_path, "many")
    result = heatjob("submit", str(spec), "--workers", "3", "-q")
    assert result.returncode == 0, result.stderr
    assert "3 CPU workers" in result.stdout
    store = tmp_path / "many.zarr"
    assert_same_store(read(store), reference)

    verify = status(str(store), "--verify", "--json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.output)
    assert report["verify"]["units_checked"] == len(reference["units/done"])
    assert report["verify"]["mismatches"] == []

    # unit 4's shard of the first composite: flip one byte in the middle of its file
    shard = store / "heatmaps" / COMPOSITES[0] / "c" / "4" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    # unit 7: a well-formed write of other values, as a second writer would leave
    root = zarr.open_group(store, mode="r+")
    row = root[f"heatmaps/{COMPOSITES[1]}"][7 * 3]
    root[f"heatmaps/{COMPOSITES[1]}"][7 * 3] = row + 1e-3

    verify = status(str(store), "--verify")
    assert verify.exit_code == 1, verify.output
    assert f"verify: {len(reference['units/done']) - 2}/" in verify.output
    assert "unit 4:" in verify.output and "unit 7: checksum mismatch" in verify.output


def test_driver_killed_part_way_resumes_only_what_is_missing(reference, tmp_path):
    """SIGKILL the driver while one unit is held mid-way by its worker and others are done;
    the rerun does only the units without a done record, and the store equals the reference.
    The workers wrote the done units' records themselves: the killed driver wrote none, and
    the rerun copies every unit's record into units/done, attempts and checksum."""
    spec = write_spec(tmp_path, "killed")
    store = tmp_path / "killed.zarr"
    kill_the_driver_mid_job(spec, tmp_path, 6, lambda: done_count(store), 4, "--workers", "2")
    killed = zarr.open_group(store, mode="r")
    done_before = done_units(killed)
    n_units = len(done_before)
    assert 4 <= done_before.sum() < n_units and not done_before[6]
    assert not killed["units/done"][:].any()  # the driver writes nothing per unit

    result = heatjob("submit", str(spec), "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    missing = n_units - int(done_before.sum())
    assert f": {missing} of {n_units} units written" in result.stdout
    got = read(store)
    assert_same_store(got, reference)
    np.testing.assert_array_equal(got["units/attempts"], np.ones(n_units))
    verify = status(str(store), "--verify")
    assert verify.exit_code == 0, verify.output
    assert f"verify: {n_units}/{n_units} done units check out" in verify.output


def test_a_worker_killed_mid_unit_is_replaced_and_status_shows_the_retry(reference, tmp_path):
    spec = write_spec(tmp_path, "lost")
    store = tmp_path / "lost.zarr"
    kill_a_worker_mid_unit(spec, tmp_path, 2, "--workers", "2")
    arrays = read(store)
    assert_same_store(arrays, reference)
    expected_attempts = np.ones_like(arrays["units/attempts"])
    expected_attempts[2] = 2
    np.testing.assert_array_equal(arrays["units/attempts"], expected_attempts)

    text = status(str(store))
    assert text.exit_code == 0 and "retries: 1 (units 2)" in text.output
    assert json.loads(status(str(store), "--json").output)["retried_units"] == {"2": 2}


def test_a_store_from_before_attempts_and_checksums_still_reads(reference, tmp_path):
    store = tmp_path / "old.zarr"
    shutil.copytree(reference["path"], store)
    # a store of heatjob 0.1.0: format 1, no records beside the done flags
    for name in (*RECORDS, "units/record", "units/logits"):
        shutil.rmtree(store / name)
    root = zarr.open_group(store, mode="r+")
    root.attrs["heatjob"] = {**root.attrs["heatjob"], "format": 1}
    n_units = len(reference["units/done"])
    result = status(str(store), "--verify")
    assert result.exit_code == 0, result.output
    assert f"verify: 0/0 done units check out ({n_units} without a checksum" in result.output
    assert "retries: 0" in result.output and "failures: 0 samples" in result.output


def test_a_unit_whose_worker_dies_every_time_stops_the_job_with_one_line(tmp_path):
    """Killed at each of its 3 dispatches, unit 0 is given up on: the other units run to
    the end, then one line names it, exit 2, and the store does not claim to be complete."""
    spec = write_spec(tmp_path, "doomed")
    pid_file = tmp_path / "unit-0.pid"
    process = start(
        "submit", str(spec), "--workers", "1", "-q", env={"HEATJOB_TEST_HOLD": f"0:{tmp_path}"}
    )
    try:
        for _ in range(3):
            wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="unit 0's worker")
            pid = int(pid_file.read_text())
            pid_file.unlink()  # so that the next dispatch holds too
            os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    except BaseException:
        kill_everything(process)
        raise
    assert process.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "unit 0 (rows 0-2) failed 3 times" in lines[0], stderr
    done = done_units(zarr.open_group(tmp_path / "doomed.zarr", mode="r"))
    assert not done[0] and done[1:].all()  # the other units ran to the end
    assert "incomplete" in status(str(tmp_path / "doomed.zarr")).output
