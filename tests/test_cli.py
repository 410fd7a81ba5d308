"""The command line as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zarr

from heatjob.models import SmallCNN
from heatjob.spec import to_toml

HEATJOB = [sys.executable, "-m", "heatjob.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(
        [*HEATJOB, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def write_spec(path: Path, **sections: dict) -> Path:
    base = {
        "dataset": {"kind": "synthetic", "num_samples": 8, "image_size": 32},
        "model": {"arch": "small_cnn", "num_classes": 6},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": str(path.parent / "out.zarr")},
        "run": {"batch_size": 8, "shard_size": 4},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    path.write_text(to_toml(base))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_composites_lists_every_name_with_rules():
    result = run("composites")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.strip().splitlines()]
    for name in ("EpsilonPlus", "EpsilonGammaBox", "lrp-z", "cmp-a2b1-flat", "cmp-a1b0-zb"):
        assert name in names


@pytest.mark.parametrize(
    ("sections", "fragments"),
    [
        ({"dataset": {"colour": "red"}}, ["unknown key [dataset] colour"]),
        ({"run": {"batch_size": "big"}}, ["[run] batch_size", "integer"]),
        ({"run": {"shard_size": -8}}, ["[run] shard_size", "0 (automatic) or positive", "-8"]),
        (
            {"run": {"shard_size": "auto"}},
            ["[run] shard_size must be an integer (0 = automatic), got 'auto'"],
        ),
        ({"dataset": {"kind": "voc", "root": "/no/such/voc"}}, ["[dataset] root", "/no/such/voc"]),
        ({"model": {"arch": "vgg17"}}, ["[model] arch", "vgg17"]),
        ({"attribution": {"composites": ["EpsilonMinus"]}}, ["EpsilonMinus"]),
        ({"model": {"checkpoint": "/no/model.pt"}}, ["[model] checkpoint", "/no/model.pt"]),
    ],
)
def test_bad_specs_exit_2_with_one_line(tmp_path, sections, fragments):
    spec = write_spec(tmp_path / "job.toml", **sections)
    result = run("submit", str(spec))
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out.zarr").exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    torch.save(SmallCNN(num_classes=3).state_dict(), tmp_path / "three.pt")
    spec = write_spec(tmp_path / "job.toml", model={"checkpoint": str(tmp_path / "three.pt")})
    assert_one_line_error(run("submit", str(spec)), "three.pt", "does not fit")


def test_missing_spec_and_store(tmp_path):
    assert_one_line_error(run("submit", str(tmp_path / "none.toml")), "none.toml")
    assert_one_line_error(run("merge", str(tmp_path / "none.zarr")), "none.zarr")
    assert_one_line_error(run("status", str(tmp_path / "none.zarr")), "none.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w")
    assert_one_line_error(run("status", str(tmp_path / "other.zarr")), "not a heatjob store")


@pytest.mark.slow
def test_submit_status_merge_as_a_user_would(tmp_path):
    spec = write_spec(tmp_path / "job.toml", attribution={"composites": ["lrp-eps", "cmp-a1b0"]})
    store = tmp_path / "out.zarr"
    result = run("submit", str(spec), "--limit", "6", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "units written" in result.stdout

    status = run("status", str(store), "--json")
    report = json.loads(status.stdout)
    assert report["units_done"] == report["units_total"] > 1
    assert (
        report["rows_done"]
        == report["rows_total"]
        == zarr.open_group(store)["rows/sample"].shape[0]
    )

    merged = run("merge", str(store), "--json", str(tmp_path / "metrics.json"), "--quiet")
    assert merged.returncode == 0, merged.stderr
    for name in ("lrp-eps", "cmp-a1b0", "baseline:random", "baseline:centre"):
        assert name in merged.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"lrp-eps", "cmp-a1b0"}
    assert metrics["lrp-eps"]["n_rows"] > 0

    again = run("submit", str(spec), "--limit", "6", "--quiet")
    assert again.returncode == 0 and "already done" in again.stdout
