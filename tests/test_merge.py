"""merge: per-row arrays, failed samples, non-finite maps, per-class and size tables,
bootstrap intervals; checked against a naive re-reading of the store it writes.

The stores here are real heatjob stores of the synthetic data set (factories.make_store:
heatjob's own `prepare` and `create_store`), with heatmaps written by the test instead of
the model: a blob on one of the target's boxes, so the expected numbers are known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from factories import COMPOSITES, make_store

from heatjob.eval import metrics as M
from heatjob.eval.merge import RowBoxes, merge, row_geometry, scored_rows
from heatjob.eval.report import format_table
from heatjob.store import records


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    path = tmp_path_factory.mktemp("merge") / "s.zarr"
    make_store(path)
    report = merge(str(path), json_path=str(path.parent / "m.json"), progress=False, resamples=200)
    return path, report


def _naive_per_row(root, composite):
    """Relevance mass, pointing game and other-class mass per row, by loops."""
    maps = root[f"heatmaps/{composite}"][:].astype(np.float64)
    rows_sample, rows_target = root["rows/sample"][:], root["rows/target"][:]
    bs, bc, xyxy = root["boxes/sample"][:], root["boxes/class"][:], root["boxes/xyxy"][:]
    sizes = root["samples/size"][:]
    s = maps.shape[-1]
    c = np.arange(s) + 0.5
    out = {"mass": [], "hit": [], "other": []}
    for r, (smp, t) in enumerate(zip(rows_sample, rows_target, strict=True)):

        def mask_of(sel):
            m = np.zeros((s, s), bool)
            for x0, y0, x1, y1 in xyxy[sel]:
                m |= (c[:, None] >= y0) & (c[:, None] < y1) & (c[None] >= x0) & (c[None] < x1)
            return m

        own = mask_of((bs == smp) & (bc == t))
        other = mask_of((bs == smp) & (bc != t)) & ~own
        pos = np.clip(maps[r], 0, None)
        out["mass"].append(pos[own].sum() / pos.sum())
        out["other"].append(
            pos[other].sum() / pos.sum() if ((bs == smp) & (bc != t)).any() else np.nan
        )
        y, x = np.unravel_index(np.argmax(maps[r]), (s, s))
        h, w = sizes[smp]
        px, py = (x + 0.5) * w / s, (y + 0.5) * h / s
        best = min(
            np.hypot(
                max(x0 * w / s - px, px - x1 * w / s, 0), max(y0 * h / s - py, py - y1 * h / s, 0)
            )
            for x0, y0, x1, y1 in xyxy[(bs == smp) & (bc == t)]
        )
        out["hit"].append(float(best <= 15))
    return {k: np.array(v) for k, v in out.items()}


def test_per_row_arrays_match_a_naive_reading(merged):
    path, report = merged
    root = zarr.open_group(str(path), mode="r")
    n = root["rows/sample"].shape[0]
    for composite in COMPOSITES:
        naive = _naive_per_row(root, composite)
        group = root[f"metrics/{composite}"]
        assert group["relevance_mass"].shape == (n,)
        assert group["relevance_mass"].metadata.dimension_names == ("row",)
        np.testing.assert_allclose(group["relevance_mass"][:], naive["mass"], rtol=1e-6)
        np.testing.assert_array_equal(group["pointing_game"][:], naive["hit"])
        np.testing.assert_allclose(group["other_class_mass"][:], naive["other"], rtol=1e-6)
        assert group["heatmap_box"].shape == (n, 4)
        # the aggregates are the means of the arrays
        assert report.metrics[composite]["relevance_mass"] == pytest.approx(
            naive["mass"].mean(), abs=1e-6
        )
        with_other = ~np.isnan(naive["other"])
        assert report.metrics[composite]["class_discriminativity"] == pytest.approx(
            np.mean(naive["mass"][with_other] - naive["other"][with_other]), abs=1e-6
        )
    assert root["rows/scored"][:].all()
    # composite 1 points at another class's box where there is one: less discriminative
    assert report.metrics["EpsilonPlusFlat"]["class_discriminativity"] > 0.2
    assert report.metrics["cmp-a2b1-flat"]["class_discriminativity"] < -0.2


def test_row_geometry_reads_labels_and_logits_a_block_of_samples_at_a_time(merged, monkeypatch):
    """Other-class flags and scores from blocks of 5 samples are those of the whole
    matrices, computed here from samples/labels and samples/logits read whole."""
    root = zarr.open_group(str(merged[0]), mode="r")
    monkeypatch.setattr(records, "BLOCK_SAMPLES", 5)
    rows = row_geometry(root)
    labels, logits = root["samples/labels"][:], root["samples/logits"][:]
    assert rows.n_samples > 5 and len(rows.rows) > 0
    others = labels[rows.sample].sum(axis=1) - labels[rows.sample, rows.target]
    np.testing.assert_array_equal(rows.other_class, others > 0)
    assert rows.other_class.any() and not rows.other_class.all()
    np.testing.assert_array_equal(rows.score, logits[rows.sample, rows.target])
    assert (rows.n_samples, rows.n_classes) == labels.shape


def test_row_boxes_are_each_rows_boxes_by_loops():
    """Scored rows and their boxes, as two offsets a row, against a loop over every box:
    rows without a box of their class, or with a target still pending (-1), are not
    scored; a row's boxes keep the store's order."""
    rng = np.random.default_rng(4)
    box_sample = rng.integers(0, 12, 40)
    box_class = rng.integers(0, 4, 40)
    xyxy = rng.random((40, 4)).astype(np.float32)
    rows_sample = np.sort(rng.integers(0, 14, 50))
    rows_target = rng.integers(-1, 4, 50)
    rows = scored_rows(rows_sample, rows_target, box_sample, box_class)
    pairs = set(zip(box_sample.tolist(), box_class.tolist(), strict=True))
    expected = [r for r in range(50) if (rows_sample[r], rows_target[r]) in pairs]
    assert rows.tolist() == expected and 0 < len(expected) < 50
    sample, target = rows_sample[rows], rows_target[rows]
    boxes, others = RowBoxes.of(sample, target, box_sample, box_class, xyxy)
    assert len(boxes) == len(others) == len(rows)
    for i, (s_, t) in enumerate(zip(sample, target, strict=True)):
        here = box_sample == s_
        np.testing.assert_array_equal(boxes[i], xyxy[here & (box_class == t)])
        np.testing.assert_array_equal(others[i], xyxy[here & (box_class != t)])
    assert [len(b) for b in others] == [len(others[i]) for i in range(len(rows))]


def test_json_keeps_the_contract_shape_and_attrs_hold_the_rest(merged):
    path, report = merged
    written = json.loads((path.parent / "m.json").read_text())
    assert set(written) == set(COMPOSITES)
    assert written == report.metrics
    attrs = zarr.open_group(str(path), mode="r").attrs
    assert attrs["metrics"] == written
    assert set(attrs["intervals"]) == {*COMPOSITES, "baseline:random", "baseline:centre"}
    assert attrs["merged"]["bootstrap"] == {
        "resamples": 200,
        "seed": 0,
        "level": 0.95,
        "unit": "sample",
    }


def test_intervals_hold_the_value_and_are_deterministic(merged, tmp_path):
    path, report = merged
    for name, values in {**report.metrics, **report.baselines}.items():
        for metric, interval in report.intervals[name].items():
            value = values[metric]
            if value is None:
                continue
            lo, hi = interval
            assert lo <= hi
            # a percentile interval need not hold the estimate, but for these means it does
            assert lo - 1e-9 <= value <= hi + 1e-9, (name, metric)
    other = tmp_path / "again.zarr"
    make_store(other)
    again = merge(str(other), progress=False, resamples=200)
    assert again.intervals == report.intervals
    assert merge(str(other), progress=False, resamples=200, seed=1).intervals != report.intervals


def test_per_class_and_size_tables_add_up(merged):
    path, report = merged
    root = zarr.open_group(str(path), mode="r")
    classes = root.attrs["heatjob"]["classes"]
    targets = root["rows/target"][:]
    mass = root["metrics/EpsilonPlusFlat/relevance_mass"][:]
    table = report.per_class["EpsilonPlusFlat"]
    for name, row in table.items():
        own = targets == classes.index(name)
        assert row["n_rows"] == own.sum()
        assert row["relevance_mass"] == pytest.approx(mass[own].mean(), abs=1e-6)
    pg = [row["pointing_game"] for row in table.values()]
    assert report.metrics["EpsilonPlusFlat"]["pointing_game"] == pytest.approx(np.mean(pg))
    share = root["rows/box_share"][:]
    sizes = report.by_size["EpsilonPlusFlat"]
    assert sum(b["n_rows"] for b in sizes.values()) == len(targets)
    small = share < 1 / 16
    assert sizes["small"]["n_rows"] == small.sum()
    if small.any():
        assert sizes["small"]["relevance_mass"] == pytest.approx(mass[small].mean(), abs=1e-6)


def test_failed_samples_and_non_finite_maps_are_left_out(tmp_path):
    path = tmp_path / "f.zarr"
    root = make_store(path, n_samples=16)
    rows_sample = root["rows/sample"][:]
    failed = np.zeros(root["samples/id"].shape[0], bool)
    failed[[2, 5]] = True
    root["samples/failed"][:] = failed  # as submit records an unreadable sample
    maps = root["heatmaps/EpsilonPlusFlat"][:]
    failed_rows = np.isin(rows_sample, [2, 5])
    maps[failed_rows] = np.nan  # as the failures branch leaves them
    bad_row = int(np.flatnonzero(~failed_rows)[0])
    maps[bad_row, 3, 3] = np.inf
    root["heatmaps/EpsilonPlusFlat"][:] = maps
    report = merge(str(path), progress=False, resamples=50)

    n_failed = int(failed_rows.sum())
    assert report.excluded_failed == n_failed
    assert report.metrics["cmp-a2b1-flat"]["n_rows"] == len(rows_sample) - n_failed
    assert report.metrics["EpsilonPlusFlat"]["n_rows"] == len(rows_sample) - n_failed - 1
    assert any(f"{n_failed} rows of 2 failed samples excluded" in n for n in report.notes)
    assert any("EpsilonPlusFlat: 1 rows with NaN or Inf" in n for n in report.notes)
    table = format_table(report)
    assert f"{n_failed} rows of 2 failed samples excluded" in table
    mass = zarr.open_group(str(path))["metrics/EpsilonPlusFlat/relevance_mass"][:]
    assert np.isnan(mass[failed_rows]).all() and np.isnan(mass[bad_row])
    keep = ~np.isnan(mass)
    assert report.metrics["EpsilonPlusFlat"]["relevance_mass"] == pytest.approx(
        mass[keep].mean(), abs=1e-6
    )
    merged_attr = zarr.open_group(str(path)).attrs["merged"]
    assert merged_attr["excluded_failed_rows"] == n_failed
    for value in report.metrics["EpsilonPlusFlat"].values():
        assert value is None or np.isfinite(value)


def test_box_ap_matches_voc_reference_on_the_written_boxes(merged):
    path, report = merged
    root = zarr.open_group(str(path), mode="r")
    boxes = root["metrics/cmp-a2b1-flat/heatmap_box"][:]
    targets, rows_sample = root["rows/target"][:], root["rows/sample"][:]
    logits = root["samples/logits"][:]
    gs, gc, gx = root["boxes/sample"][:], root["boxes/class"][:], root["boxes/xyxy"][:]
    gd = root["boxes/difficult"][:]
    aps = []
    for c in np.unique(targets):
        d = targets == c
        aps.append(
            M.voc_average_precision(
                boxes[d],
                logits[rows_sample[d], c],
                rows_sample[d],
                gx[gc == c],
                gs[gc == c],
                gd[gc == c],
            )
        )
    assert report.metrics["cmp-a2b1-flat"]["box_ap50"] == pytest.approx(np.nanmean(aps), abs=1e-6)
