"""SmoothGrad's seeded noise through the real job path (the CLI, a real Ray): a unit retried
after its worker died, and a job resumed after its driver was killed, give bitwise the maps of
an uninterrupted run; one worker and two give the same maps to float32 round-off (bitwise
only at equal torch threads per worker: one worker here runs two threads, two run one each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from jobrun import done_count, heatjob, kill_a_worker_mid_unit, kill_the_driver_mid_job

from heatjob.store.records import done_units

pytestmark = pytest.mark.slow

CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "small_cnn_shapes.pt"
METHODS = {
    "sg": {"kind": "smoothgrad", "samples": 4, "noise": 0.2, "seed": 3},
    "grad": {"kind": "gradient"},
}
COMPARED = ("rows/sample", "rows/target", "heatmaps/sg", "heatmaps/grad")


def write_spec(folder: Path, name: str) -> Path:
    """24 synthetic images, the demo's model, methods only, shards of 3 rows."""
    tables = "\n".join(
        f"[attribution.methods.{method}]\n"
        + "\n".join(f"{key} = {json.dumps(value)}" for key, value in table.items())
        for method, table in METHODS.items()
    )
    spec = folder / f"{name}.toml"
    spec.write_text(
        f"""
[dataset]
kind = "synthetic"
num_samples = 24
seed = 7
image_size = 32
[model]
arch = "small_cnn"
checkpoint = "{CHECKPOINT}"
num_classes = 6
[attribution]
{tables}
[store]
path = "{folder / name}.zarr"
dtype = "float32"
[run]
batch_size = 4
shard_size = 3
"""
    )
    return spec


def read(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(store, mode="r")
    arrays = {name: root[name][:] for name in COMPARED}
    assert root["units/done"][:].all()
    return arrays


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Uninterrupted, two workers of one torch thread each."""
    folder = tmp_path_factory.mktemp("reference")
    result = heatjob("submit", str(write_spec(folder, "ref")), "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    arrays = read(folder / "ref.zarr")
    sg, grad = arrays["heatmaps/sg"], arrays["heatmaps/grad"]
    assert np.isfinite(sg).all() and np.abs(sg).max() > 0
    # the noise does something: SmoothGrad is not the plain gradient
    assert np.abs(sg - grad).max() > 0.05 * np.abs(grad).max()
    return arrays


def assert_bitwise(got: dict, expected: dict) -> None:
    for name in COMPARED:
        assert got[name].tobytes() == expected[name].tobytes(), f"{name} differs"


def test_a_retried_unit_gives_bitwise_the_same_smoothgrad(reference, tmp_path):
    spec = write_spec(tmp_path, "lost")
    kill_a_worker_mid_unit(spec, tmp_path, 2, "--workers", "2")
    assert zarr.open_group(tmp_path / "lost.zarr", mode="r")["units/attempts"][2] == 2
    assert_bitwise(read(tmp_path / "lost.zarr"), reference)


def test_a_resumed_job_gives_bitwise_the_same_smoothgrad(reference, tmp_path):
    spec = write_spec(tmp_path, "killed")
    store = tmp_path / "killed.zarr"
    kill_the_driver_mid_job(spec, tmp_path, 5, lambda: done_count(store), 3, "--workers", "2")
    done_before = done_units(zarr.open_group(store, mode="r"))  # the units' own done records
    assert 3 <= done_before.sum() < len(done_before) and not done_before[5]

    result = heatjob("submit", str(spec), "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    missing = len(done_before) - int(done_before.sum())
    assert f": {missing} of {len(done_before)} units written" in result.stdout
    assert_bitwise(read(store), reference)


def test_one_worker_and_two_give_the_same_smoothgrad_to_round_off(reference, tmp_path):
    result = heatjob("submit", str(write_spec(tmp_path, "one")), "--workers", "1", "-q")
    assert result.returncode == 0, result.stderr
    got = read(tmp_path / "one.zarr")
    for name in ("rows/sample", "rows/target"):
        np.testing.assert_array_equal(got[name], reference[name])
    for name in ("heatmaps/sg", "heatmaps/grad"):
        scale = np.abs(reference[name]).max(axis=(1, 2), keepdims=True)
        assert (np.abs(got[name] - reference[name]) <= 1e-5 * scale).all(), name
