"""heatjob render and merge --figure: PNGs read back, pixels where the boxes and peaks are."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr
from factories import COMPOSITES, make_store
from PIL import Image

from heatjob.errors import HeatjobError
from heatjob.eval.merge import merge
from heatjob.view.render import parse_rows, render


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("render") / "s.zarr"
    make_store(path, n_samples=12)
    return path


def test_overlays_and_grid_for_chosen_rows(store, tmp_path):
    written = render(str(store), str(tmp_path), rows=[0, 3])
    names = sorted(p.name for p in written)
    want = sorted([f"row{r:06d}-{c}.png" for r in (0, 3) for c in COMPOSITES] + ["grid.png"])
    assert names == want
    for p in written:
        image = np.asarray(Image.open(p).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 100
    overlay = np.asarray(Image.open(tmp_path / f"row000000-{COMPOSITES[0]}.png").convert("RGB"))
    r, g, b = (overlay[..., i].astype(int) for i in range(3))
    assert ((g > 200) & (r < 80) & (b < 80)).sum() > 20  # the target's box, drawn in lime
    assert ((r > 200) & (g < 120) & (b < 120)).sum() > 20  # the positive peak, in red
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > grid.height  # two rows of 1 + 2 panels


def test_sample_is_seeded_and_bad_rows_are_one_line_errors(store, tmp_path):
    a = render(str(store), str(tmp_path / "a"), sample=2, seed=3)
    b = render(str(store), str(tmp_path / "b"), sample=2, seed=3)
    assert [p.name for p in a] == [p.name for p in b]
    n = zarr.open_group(str(store), mode="r")["rows/sample"].shape[0]
    with pytest.raises(HeatjobError, match=f"row {n} is out of range"):
        render(str(store), str(tmp_path), rows=[n])
    with pytest.raises(HeatjobError, match="^--composite: 'nope' is not in the store"):
        render(str(store), str(tmp_path), rows=[0], composites=["nope"])
    assert parse_rows("0,5,9-11") == [0, 5, 9, 10, 11]
    with pytest.raises(HeatjobError, match="'x' is not a row"):
        parse_rows("1,x")


@pytest.mark.slow
def test_cli_render_and_merge_figure(store, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "heatjob.cli", *args], capture_output=True, text=True
        )

    done = run("render", str(store), "--out", str(tmp_path / "r"), "--rows", "1-2")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / f"row000002-{COMPOSITES[1]}.png").exists()
    bad = run("render", str(store), "--out", str(tmp_path / "r"), "--rows", "99999")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    figure = tmp_path / "m.png"
    report = merge(str(store), progress=False, resamples=50, figure=str(figure))
    image = Image.open(figure)
    assert image.width > 800 and report.intervals


def test_a_store_whose_data_is_gone_still_renders_the_heatmaps(tmp_path):
    path = tmp_path / "gone.zarr"
    root = make_store(path, n_samples=6)
    attrs = dict(root.attrs["heatjob"])
    attrs["spec"] = {
        **attrs["spec"],
        "dataset": {**attrs["spec"]["dataset"], "kind": "voc", "root": str(tmp_path / "nowhere")},
    }
    root.attrs["heatjob"] = attrs
    notes: list[str] = []
    written = render(str(path), str(tmp_path / "r"), rows=[0], notes=notes)
    assert len(written) == len(COMPOSITES) + 1
    assert len(notes) == 1 and "input images not drawn" in notes[0] and "nowhere" in notes[0]
