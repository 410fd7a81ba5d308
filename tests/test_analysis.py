"""heatjob.open_store: the lazy Dataset, and the README's three lines of analysis run as
written (only the store path swapped), checked against the raw Zarr arrays."""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from factories import COMPOSITES, make_store

import heatjob
from heatjob.eval.merge import merge

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("analysis") / "s.zarr"
    make_store(path, n_samples=16)
    merge(str(path), progress=False, resamples=20)
    return path


def test_dataset_is_lazy_chunked_by_shard_and_equals_the_arrays(store):
    ds = heatjob.open_store(str(store))
    root = zarr.open_group(str(store), mode="r")
    shard = root.attrs["heatjob"]["shard_size"]
    n = root["rows/sample"].shape[0]
    assert ds.heatmap.dims == ("composite", "row", "y", "x")
    assert isinstance(ds.heatmap.data, da.Array)
    assert ds.heatmap.data.chunks[1][0] == shard
    assert isinstance(ds.relevance_mass.data, da.Array)
    assert list(ds.composite.values) == list(COMPOSITES)
    np.testing.assert_array_equal(
        ds.heatmap.sel(composite=COMPOSITES[1]).values, root[f"heatmaps/{COMPOSITES[1]}"][:]
    )
    np.testing.assert_array_equal(
        ds.relevance_mass.sel(composite=COMPOSITES[0]).values,
        root[f"metrics/{COMPOSITES[0]}/relevance_mass"][:],
    )
    np.testing.assert_array_equal(ds.row_sample.values, root["rows/sample"][:])
    assert ds.sizes["row"] == n and ds.sizes["box"] == root["boxes/sample"].shape[0]
    assert ds.attrs["metrics"] == root.attrs["metrics"]


def test_an_unmerged_store_opens_without_metrics(tmp_path):
    path = tmp_path / "u.zarr"
    make_store(path, n_samples=6)
    ds = heatjob.open_store(str(path))
    assert "heatmap" in ds and "relevance_mass" not in ds and "metrics" not in ds.attrs


def test_the_readme_lines_run_and_say_what_they_claim(store):
    block = re.search(r"```python\n(import heatjob\n.*?)```", README.read_text(), re.S)
    assert block, "README has no analysis block starting with `import heatjob`"
    code = block.group(1).replace("out/demo.zarr", str(store))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)

    root = zarr.open_group(str(store), mode="r")
    classes = root.attrs["heatjob"]["classes"]
    targets = root["rows/target"][:]
    ap = {c: root[f"metrics/{c}/pixel_ap"][:] for c in COMPOSITES}
    for name, best in scope["best"].items():
        own = targets == classes.index(name)
        means = {c: np.nanmean(ap[c][own]) for c in COMPOSITES}
        assert best == max(means, key=means.get)
    a = root["metrics/cmp-a2b1-flat/relevance_mass"][:]
    b = root["metrics/EpsilonPlusFlat/relevance_mass"][:]
    gap = np.abs(a - b)
    assert scope["gap"].index[0] == int(np.argmax(gap))
    assert scope["gap"].iloc[0] == pytest.approx(gap.max())
    maps = scope["maps"]
    sample = list(root["samples/id"][:]).index("synthetic-000004")
    rows = np.flatnonzero(root["rows/sample"][:] == sample)
    assert maps.shape == (len(COMPOSITES), len(rows), *root["heatmaps/EpsilonPlusFlat"].shape[1:])
    np.testing.assert_array_equal(
        maps.sel(composite="EpsilonPlusFlat").values, root["heatmaps/EpsilonPlusFlat"][rows]
    )
