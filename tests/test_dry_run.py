"""`heatjob submit --dry-run`: the plan it prints is the plan submit then carries out.

The truth is a real submit of the same spec afterwards: its store's rows, units
and shard files, and the bytes its heatmaps take on disk.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import zarr

from heatjob.job.dryrun import dry_run, format_dry_run
from heatjob.models import SmallCNN
from heatjob.spec import parse_spec, to_toml

HEATJOB = [sys.executable, "-m", "heatjob.cli"]


def spec_dict(tmp_path: Path, **run) -> dict:
    checkpoint = tmp_path / "model.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        torch.save(SmallCNN(num_classes=6).state_dict(), checkpoint)
    return {
        "dataset": {"kind": "synthetic", "num_samples": 40, "image_size": 32},
        "model": {"arch": "small_cnn", "checkpoint": str(checkpoint), "num_classes": 6},
        "attribution": {"composites": ["EpsilonPlusFlat", "lrp-eps"], "targets": "labels"},
        "store": {"path": str(tmp_path / "out.zarr"), "dtype": "float16"},
        "run": {"batch_size": 16, "shard_size": 8, **run},
    }


def test_dry_run_writes_nothing_starts_no_ray_and_calibrates(tmp_path):
    spec = parse_spec(spec_dict(tmp_path, workers=1), source="job.toml")
    run = dry_run(spec, progress=False)
    assert not (tmp_path / "out.zarr").exists()
    assert not ray.is_initialized()
    cal = run.calibration
    assert cal.rows == 16 and cal.samples <= 16
    assert cal.seconds_per_row > 0 and cal.bytes_per_row > 0
    # float16 heatmaps can not take more than their raw bytes plus the shard index (16 B/chunk)
    assert cal.bytes_per_row <= 32 * 32 * 2 + 16 + 4
    assert run.workers.workers == 1 and run.units_pending == len(run.job.plan.units)
    text = format_dry_run(run)
    assert text.splitlines()[0].startswith("store") and "(new)" in text
    assert f"{run.job.plan.n_rows} heatmap rows" in text


def test_dry_run_counts_methods_as_heatmap_sources(tmp_path):
    raw = spec_dict(tmp_path, workers=1)
    raw["attribution"]["methods"] = {
        "grad": {"kind": "gradient"},
        "sg": {"kind": "smoothgrad", "samples": 2},
    }
    run = dry_run(parse_spec(raw, source="job.toml"), progress=False)
    text = format_dry_run(run)
    units = len(run.job.plan.units)
    assert f"4 heatmap sources (2 composites, 2 methods) -> {units * 4} heatmap shards" in text
    assert "explain x4" in text and "B/row/source" in text
    raw_bytes = run.job.plan.n_rows * 4 * 32 * 32 * 2  # float16
    assert run.raw_bytes == raw_bytes


def test_predicted_targets_calibrate_on_the_top_logit(tmp_path):
    raw = spec_dict(tmp_path, workers=1)
    raw["attribution"]["targets"] = "predicted:2"
    run = dry_run(parse_spec(raw, source="job.toml"), progress=False)
    assert run.job.plan.n_rows == 80 and run.calibration.rows == 16


@pytest.mark.slow
def test_the_printed_plan_is_what_submit_then_does(tmp_path):
    spec = tmp_path / "job.toml"
    raw = spec_dict(tmp_path, workers=1)
    spec.write_text(
        "\n".join(
            f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
            for section, values in raw.items()
        )
        + "\n"
    )
    env_run = dict(capture_output=True, text=True, timeout=600)
    planned = subprocess.run([*HEATJOB, "submit", str(spec), "--dry-run", "-q"], **env_run)
    assert planned.returncode == 0, planned.stderr
    assert not (tmp_path / "out.zarr").exists()
    text = planned.stdout
    rows = int(re.search(r"(\d+) heatmap rows", text).group(1))
    units = int(re.search(r"(\d+) units of 8 rows, \1 to run", text).group(1))
    shards = int(
        re.search(r"2 heatmap sources \(2 composites\) -> (\d+) heatmap shards", text).group(1)
    )
    stored = float(re.search(r"\(([\d,]+) B/row/source", text).group(1).replace(",", ""))
    assert re.search(r"estimate +~\d+ s: \d+ s of compute for \d+ rows on 1 CPU worker", text)

    done = subprocess.run([*HEATJOB, "submit", str(spec), "-q"], **env_run)
    assert done.returncode == 0, done.stderr
    store = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert store["rows/sample"].shape[0] == rows
    assert store["units/done"].shape[0] == units
    heatmaps = tmp_path / "out.zarr" / "heatmaps"
    files = [f for f in heatmaps.rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert len(files) == shards
    on_disk = sum(f.stat().st_size for f in files) / (rows * 2)
    # measured on one batch of 16 rows, it predicts the whole store's bytes per row closely
    assert on_disk == pytest.approx(stored, rel=0.25)

    again = format_dry_run(dry_run(parse_spec(raw, source=str(spec)), progress=False))
    assert f"resumes: {units} of {units} units done" in again
    assert f"{units} units of 8 rows, 0 to run" in again
    assert not np.isnan(store["heatmaps/lrp-eps"][:]).any()


def test_a_store_of_another_job_is_refused_by_the_dry_run_as_by_submit(tmp_path):
    from factories import make_store

    from heatjob.errors import HeatjobError
    from heatjob.job.submit import submit

    raw = spec_dict(tmp_path, workers=1)
    make_store(raw["store"]["path"], n_samples=16)  # another job's finished store
    spec = parse_spec(raw, source="job.toml")
    with pytest.raises(HeatjobError) as by_submit:
        submit(spec, progress=False)
    with pytest.raises(HeatjobError) as by_dry_run:
        dry_run(spec, progress=False)
    assert str(by_dry_run.value) == str(by_submit.value)
    assert "was made by a different spec" in str(by_submit.value)
    assert not ray.is_initialized()
    # on the command line: the same one line, exit code 2, the store untouched
    spec_file = tmp_path / "job.toml"
    spec_file.write_text(to_toml(raw))
    before = sorted(p.name for p in Path(raw["store"]["path"]).rglob("*"))
    done = subprocess.run(
        [*HEATJOB, "submit", str(spec_file), "--dry-run", "-q"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"heatjob: error: {by_submit.value}"
    assert sorted(p.name for p in Path(raw["store"]["path"]).rglob("*")) == before


def test_overwrite_in_a_dry_run_says_what_submit_would_delete(tmp_path):
    from factories import make_store

    raw = spec_dict(tmp_path, workers=1)
    make_store(raw["store"]["path"], n_samples=16)
    run = dry_run(parse_spec(raw, source="job.toml"), progress=False, overwrite=True)
    assert "(overwrite: the store there is deleted first)" in format_dry_run(run)
    assert run.units_pending == len(run.job.plan.units)
    assert (Path(raw["store"]["path"]) / "zarr.json").exists()  # a dry run deletes nothing


def test_the_dry_run_says_how_big_a_shard_object_is_and_which_shard_size_fits():
    """A heatmap shard is one object: 224 x 224 float16 at ~100 kB a row is 6.4 MB at 64
    rows (inside 4..100 MB); 32 x 32 at 2 kB a row is 128 kB, so it proposes 16,384 rows
    (2^14, the power of two nearest 32 MB / 2 kB = 15,625)."""
    from heatjob.job.dryrun import shard_advice
    from heatjob.job.plan import suggested_shard_size

    assert suggested_shard_size(100_352) == 256  # 32e6 / 100,352 = 319 -> 2^8
    assert suggested_shard_size(2048) == 16384
    assert shard_advice(64, 100_000) == (
        "~6.4 MB per heatmap shard (one object, 64 rows); within 4.0 MB..100.0 MB"
    )
    text = shard_advice(64, 2000)
    assert "~128.0 kB per heatmap shard" in text and "shard_size = 16384" in text
