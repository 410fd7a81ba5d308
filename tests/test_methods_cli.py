"""A job with methods beside a composite, through the real command line: submit, status,
merge --json; a bad method table and a changed parameter are refused with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from test_cli import assert_one_line_error, run, write_spec

from heatjob.store.schema import METRIC_NAMES

METHODS = {
    "grad": {"kind": "gradient"},
    "ig": {"kind": "integrated-gradients", "steps": 4},
    "sg": {"kind": "smoothgrad", "samples": 3},
    "cam": {"kind": "gradcam"},
    "gamma05": {
        "kind": "lrp",
        "preset": "EpsilonGammaBox",
        "conv": {"rule": "gamma", "gamma": 0.5},
    },
}


def test_a_bad_method_table_exits_2_with_one_line(tmp_path):
    spec = write_spec(
        tmp_path / "job.toml",
        attribution={"methods": {"ig": {"kind": "integrated-gradients", "steps": -1}}},
    )
    assert_one_line_error(run("submit", str(spec)), "[attribution.methods.ig] steps")
    spec = write_spec(
        tmp_path / "job.toml",
        attribution={"methods": {"cam": {"kind": "gradcam", "layer": "nope.3"}}},
    )
    assert_one_line_error(run("submit", str(spec)), "[attribution.methods.cam] layer", "nope.3")
    assert not (tmp_path / "out.zarr").exists()


EPLUS = {"kind": "lrp", "preset": "EpsilonPlus"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("table", "fragments"),
    [
        ({"kind": "occlusionx"}, ["kind must be one of", "'occlusionx'"]),
        ({**EPLUS, "conv": {"rule": "zz"}}, ["conv.rule must be one of", "'zz'"]),
        ({"kind": "gradient", "steps": 3}, ["unknown key 'steps' for kind 'gradient'"]),
        (
            {**EPLUS, "conv": {"rule": "alpha-beta", "alpha": 3, "beta": 1}},
            ["conv alpha - beta must be 1", "alpha 3.0, beta 1.0"],
        ),
        (
            {**EPLUS, "linear": {"rule": "epsilon", "epsilon": -0.5}},
            ["linear.epsilon must be 0 or positive", "-0.5"],
        ),
        ({**EPLUS, "layers": {"features.99": {"rule": "flat"}}}, ["layers", "'features.99'"]),
        ({"kind": "gradcam", "layer": "nope.3"}, ["layer", "nope.3"]),
        (
            {**EPLUS, "first": {"rule": "zbox", "low": 2.0, "high": [3.0, 1.0, 3.0]}},
            ["first low must be below high in every channel"],
        ),
        ({**EPLUS, "first": {"rule": "zbox", "low": "0"}}, ["first.low must be a number"]),
        ({"kind": "smoothgrad", "samples": "many"}, ["samples must be an integer", "'many'"]),
        ({"kind": "smoothgrad", "noise": True}, ["noise must be a number", "True"]),
        ({**EPLUS, "conv": {"rule": "gamma", "gamma": "big"}}, ["conv.gamma must be a number"]),
        ({**EPLUS, "conv": "gamma"}, ["conv must be a table"]),
        ({"kind": "lrp", "conv": {"rule": "z"}}, ["linear is required without a preset"]),
    ],
    ids=[
        "unknown-kind",
        "unknown-rule",
        "unknown-key",
        "alpha-beta",
        "negative-epsilon",
        "missing-module-path",
        "gradcam-layer",
        "zbox-bounds",
        "zbox-type",
        "int-type",
        "float-type",
        "rule-parameter-type",
        "rule-not-a-table",
        "no-preset-no-linear",
    ],
)
def test_each_kind_of_bad_method_table_exits_2_with_one_line(tmp_path, table, fragments):
    spec = write_spec(tmp_path / "job.toml", attribution={"methods": {"m": table}})
    assert_one_line_error(run("submit", str(spec)), "job.toml: [attribution.methods.m]", *fragments)
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_methods_run_beside_a_composite_through_submit_and_merge(tmp_path):
    spec = write_spec(tmp_path / "job.toml", attribution={"methods": METHODS})
    store = tmp_path / "out.zarr"
    result = run("submit", str(spec), "--limit", "6", "--workers", "1", "--quiet")
    assert result.returncode == 0, result.stderr

    root = zarr.open_group(store, mode="r")
    n_rows = root["rows/sample"].shape[0]
    for name in ("EpsilonPlusFlat", *METHODS):
        maps = root[f"heatmaps/{name}"][:]
        assert maps.shape == (n_rows, 32, 32)
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0, name
    stored = root.attrs["heatjob"]["spec"]["attribution"]["methods"]
    # the provenance holds every parameter, defaults and the default layer resolved
    assert stored["sg"] == {"kind": "smoothgrad", "samples": 3, "noise": 0.1, "seed": 0}
    assert stored["cam"] == {"kind": "gradcam", "layer": "features.14"}
    assert stored["grad"] == {"kind": "gradient"}
    assert stored["gamma05"]["conv"] == {"rule": "gamma", "gamma": 0.5}

    status = json.loads(run("status", str(store), "--json").stdout)
    assert set(status["composites"]) == {"EpsilonPlusFlat", *METHODS}

    merged = run("merge", str(store), "--json", str(tmp_path / "metrics.json"), "--quiet")
    assert merged.returncode == 0, merged.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"EpsilonPlusFlat", *METHODS}
    for name, values in metrics.items():
        assert set(METRIC_NAMES) <= set(values), name
        assert values["n_rows"] > 0

    # resume: a changed parameter is another job, refused with one line
    changed = {**METHODS, "ig": {"kind": "integrated-gradients", "steps": 5}}
    write_spec(tmp_path / "job.toml", attribution={"methods": changed})
    again = run("submit", str(spec), "--limit", "6", "--workers", "1", "--quiet")
    assert again.returncode == 2, again.stderr
    assert "[attribution] methods" in again.stderr and "different spec" in again.stderr


def test_methods_lists_every_kind_with_its_defaults():
    result = run("methods")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.strip().splitlines()}
    assert set(lines) == {
        "gradient",
        "gradient-x-input",
        "integrated-gradients",
        "smoothgrad",
        "gradcam",
        "occlusion",
        "lrp",
    }
    assert "window = 8, stride = 8" in lines["occlusion"]
    assert "steps = 16" in lines["integrated-gradients"]
    assert "samples = 20" in lines["smoothgrad"] and "seed = 0" in lines["smoothgrad"]
    assert "layer = ''" in lines["gradcam"]
