"""Curves in a real store: written by the workers unit by unit, the same when `heatjob
evaluate` makes them later from the stored heatmaps, resumed, refused when the settings
differ; merge's AOPC recomputed by hand from the stored curves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from factories import run_job_locally, synthetic_spec

import heatjob
from heatjob.errors import HeatjobError
from heatjob.eval.merge import merge
from heatjob.eval.report import format_table
from heatjob.job.evaluate import evaluate
from heatjob.job.prepare import prepare
from heatjob.job.state import store_state
from heatjob.spec import parse_spec, to_toml

FAITH = {"steps": 5, "patch": 8, "order": ["morf", "lerf", "random"], "baseline": "mean"}
SOURCES = ("EpsilonPlusFlat", "cmp-a2b1-flat")


def spec_with(path, faithfulness=None, n_samples=16):
    raw = synthetic_spec(path, n_samples=n_samples).to_dict()
    if faithfulness is not None:
        raw["evaluation"] = {"faithfulness": faithfulness}
    return parse_spec(raw)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same job twice: curves from the workers, and none (for `evaluate` later)."""
    folder = tmp_path_factory.mktemp("faith")
    run_job_locally(spec_with(folder / "with.zarr", FAITH))
    run_job_locally(spec_with(folder / "without.zarr"))
    return folder


def test_workers_write_every_curve_and_flag_every_unit(stores):
    root = zarr.open_group(str(stores / "with.zarr"), mode="r")
    n_rows, n_units = root["rows/sample"].shape[0], root["units/done"].shape[0]
    assert root["curves/done"][:].all() and root["curves/done"].shape == (n_units,)
    assert root.attrs["faithfulness"] == {**FAITH, "seed": 0}
    logits = root["samples/logits"][:]
    first = logits[root["rows/sample"][:], root["rows/target"][:]]
    for source in SOURCES:
        for order in FAITH["order"]:
            array = root[f"curves/{source}/{order}"]
            assert array.shape == (n_rows, 6) and array.dtype == np.float32
            assert array.metadata.dimension_names == ("row", "step")
            curves = array[:]
            assert np.isfinite(curves).all()
            # step 0 is the unperturbed input: the target logit submit recorded
            np.testing.assert_allclose(curves[:, 0], first, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        root[f"curves/{SOURCES[0]}/random"][:], root[f"curves/{SOURCES[1]}/random"][:]
    )


def test_evaluate_later_gives_the_curves_the_workers_wrote(stores, tmp_path):
    copy = tmp_path / "later.zarr"
    copy_store(stores / "without.zarr", copy)
    summary = evaluate(str(copy), FAITH, progress=False)
    assert summary.units_run == summary.units_total > 1
    ours, theirs = zarr.open_group(str(copy)), zarr.open_group(str(stores / "with.zarr"))
    for source in SOURCES:
        for order in FAITH["order"]:
            np.testing.assert_array_equal(
                ours[f"curves/{source}/{order}"][:], theirs[f"curves/{source}/{order}"][:]
            )
    # the heatmaps were read, not rewritten
    for source in SOURCES:
        np.testing.assert_array_equal(
            ours[f"heatmaps/{source}"][:], theirs[f"heatmaps/{source}"][:]
        )


def test_evaluate_resumes_only_the_units_without_curves(stores, tmp_path):
    copy = tmp_path / "resume.zarr"
    copy_store(stores / "with.zarr", copy)
    root = zarr.open_group(str(copy), mode="r+")
    before = root[f"curves/{SOURCES[0]}/morf"][:]
    root["curves/done"][1] = False
    root[f"curves/{SOURCES[0]}/morf"][8:16] = np.nan  # unit 1's rows, lost
    again = evaluate(str(copy), progress=False)  # no options: the store's settings
    assert again.units_run == 1
    np.testing.assert_array_equal(root[f"curves/{SOURCES[0]}/morf"][:], before)
    assert evaluate(str(copy), progress=False).units_run == 0


def test_evaluate_refuses_other_settings_unless_overwrite(stores, tmp_path):
    copy = tmp_path / "other.zarr"
    copy_store(stores / "with.zarr", copy)
    with pytest.raises(HeatjobError, match="made with baseline = 'mean', not 'zero'"):
        evaluate(str(copy), {"baseline": "zero"}, progress=False)
    summary = evaluate(str(copy), {"baseline": "zero"}, overwrite=True, progress=False)
    assert summary.units_run == summary.units_total
    root = zarr.open_group(str(copy), mode="r")
    assert root.attrs["faithfulness"]["baseline"] == "zero"
    changed = root[f"curves/{SOURCES[0]}/morf"][:]
    original = zarr.open_group(str(stores / "with.zarr"))[f"curves/{SOURCES[0]}/morf"][:]
    np.testing.assert_array_equal(changed[:, 0], original[:, 0])
    assert not np.array_equal(changed, original)


def test_resume_under_other_faithfulness_settings_is_a_different_job(stores):
    spec = spec_with(stores / "with.zarr", {**FAITH, "steps": 4})
    with pytest.raises(HeatjobError, match=r"\[evaluation\] faithfulness is"):
        store_state(prepare(spec, progress=False))
    same = store_state(prepare(spec_with(stores / "with.zarr", FAITH), progress=False))
    assert same.resuming and not same.pending


def test_merge_reports_aopc_as_computed_by_hand(stores, tmp_path):
    copy = tmp_path / "merged.zarr"
    copy_store(stores / "with.zarr", copy)
    report = merge(str(copy), str(tmp_path / "m.json"), progress=False, resamples=200)
    root = zarr.open_group(str(copy), mode="r")
    for source in SOURCES:
        for order in FAITH["order"]:
            curves = root[f"curves/{source}/{order}"][:].astype(np.float64)
            per_row = [np.mean([c[0] - c[k] for k in range(6)]) for c in curves]
            value = report.metrics[source][f"aopc_{order}"]
            assert value == pytest.approx(np.mean(per_row), abs=1e-6)
            lo, hi = report.intervals[source][f"aopc_{order}"]
            assert lo <= value <= hi
            np.testing.assert_allclose(root[f"metrics/{source}/aopc_{order}"][:], per_row)
    ds = heatjob.open_store(str(copy))
    assert ds.curve.dims == ("composite", "order", "row", "step")
    np.testing.assert_array_equal(
        ds.curve.sel(composite=SOURCES[1], order="lerf").values,
        root[f"curves/{SOURCES[1]}/lerf"][:],
    )
    np.testing.assert_array_equal(
        ds.aopc_morf.sel(composite=SOURCES[0]).values, root[f"metrics/{SOURCES[0]}/aopc_morf"][:]
    )
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved[SOURCES[0]]["aopc_morf"] == report.metrics[SOURCES[0]]["aopc_morf"]
    assert root.attrs["merged"]["faithfulness"]["steps"] == 5
    table = format_table(report)
    assert (
        "faithfulness: AOPC" in table and f"{report.metrics[SOURCES[0]]['aopc_lerf']:.3f}" in table
    )


def test_merge_skips_faithfulness_with_a_note_while_curves_are_missing(stores, tmp_path):
    copy = tmp_path / "partial.zarr"
    copy_store(stores / "with.zarr", copy)
    zarr.open_group(str(copy), mode="r+")["curves/done"][0] = False
    report = merge(str(copy), progress=False, resamples=0)
    assert "aopc_morf" not in report.metrics[SOURCES[0]]
    assert any("curves of 1 of" in note for note in report.notes)


def copy_store(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


@pytest.mark.slow
def test_cli_bad_faithfulness_is_one_line_and_exit_2(tmp_path):
    raw = synthetic_spec(tmp_path / "x.zarr").to_dict()
    raw["evaluation"] = {"faithfulness": {"steps": 4, "baseline": "black"}}
    spec = tmp_path / "job.toml"
    spec.write_text(to_toml(raw))
    result = run_cli("submit", str(spec), "--dry-run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "[evaluation] faithfulness baseline must be one of" in line and str(spec) in line


@pytest.mark.slow
def test_cli_evaluate_bad_option_and_unfinished_store(stores, tmp_path):
    result = run_cli(
        "evaluate", str(stores / "without.zarr"), "--steps", "4", "--baseline", "black", "-q"
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "heatjob evaluate: baseline must be one of mean, zero, blur, noise" in line
    copy = tmp_path / "unfinished.zarr"
    copy_store(stores / "without.zarr", copy)
    zarr.open_group(str(copy), mode="r+")["units/done"][0] = False
    result = run_cli("evaluate", str(copy), "-q")
    assert result.returncode == 2 and "is not finished: " in result.stderr


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(
        [sys.executable, "-m", "heatjob.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
