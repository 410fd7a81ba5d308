"""Bad input of every kind: broken samples are recorded and the job goes on; bad specs and
foreign stores get one line and exit code 2, and nothing on disk is touched."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from factories import make_voc_folder

from heatjob.data import open_dataset, read_records
from heatjob.data.voc import parse_annotation
from heatjob.errors import DataError
from heatjob.job import runner
from heatjob.models import build_model

HEATJOB = [sys.executable, "-m", "heatjob.cli"]
SIZE = 32


def heatjob(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([*HEATJOB, *args], capture_output=True, text=True, env=env, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` with its sha256: to show that nothing was touched."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- boxes, records, sizing


def voc_xml(width: int, height: int, box: tuple[int, int, int, int], name: str = "dog") -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<annotation><size><width>{width}</width><height>{height}</height></size>"
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((1, 1, 80, 60), (0, 0, 80, 60)),  # the whole 80x60 image: VOC is 1-based, inclusive
        ((10, 5, 20, 15), (9, 4, 20, 15)),
        ((-4, 0, 95, 70), (0, 0, 80, 60)),  # sticks out on every side: clipped
        ((80, 60, 80, 60), (79, 59, 80, 60)),  # the last pixel
    ],
)
def test_a_box_inside_or_partly_outside_is_kept_clipped_to_the_image(tmp_path, box, expected):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml(80, 60, box))
    record = parse_annotation(path, "a")
    np.testing.assert_array_equal(record.boxes, [expected])


@pytest.mark.parametrize(
    ("box", "fragment"),
    [
        ((90, 5, 120, 20), "lies outside the 80x60 image"),  # right of the image
        ((5, -30, 20, 0), "lies outside the 80x60 image"),  # above it
        ((30, 5, 20, 20), "is inverted"),
    ],
)
def test_a_box_wholly_outside_or_inverted_fails_its_sample(tmp_path, box, fragment):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml(80, 60, box))
    with pytest.raises(DataError, match=fragment) as info:
        parse_annotation(path, "a")
    assert str(path) in str(info.value)


def test_records_go_on_past_a_broken_annotation_and_say_which(tmp_path):
    root = make_voc_folder(tmp_path / "VOC", n=6, seed=0)
    dataset = open_dataset("voc", str(root), "val", 0)
    broken = dataset.annotation_path(1)
    broken.write_text(broken.read_text()[:40])
    with pytest.raises(DataError, match=broken.name):
        read_records(dataset)  # without a failures dict, the first failure stops the read
    failures: dict[int, str] = {}
    records = read_records(dataset, failures=failures)
    assert list(failures) == [1] and broken.name in failures[1]
    assert records[1].id == dataset.ids()[1] and records[1].labels == ()
    assert records[0] == dataset.record(0) and records[2] == dataset.record(2)


def test_worker_cpu_requests_never_add_up_to_more_than_the_cluster(monkeypatch):
    """3 workers on 2 CPUs asked for round(2/3, 3) = 0.667 each, 2.001 in all, and the
    third actor waited forever."""
    for cpus, workers in ((2.0, 3), (2.0, 7), (6.0, 7), (1.0, 3)):
        monkeypatch.setattr(runner.ray, "cluster_resources", lambda c=cpus: {"CPU": c})
        plan = runner.plan_workers(workers, "cpu", n_units=100)
        assert plan.workers == workers
        assert plan.num_cpus * plan.workers <= cpus


def test_a_model_without_weights_is_the_same_in_every_worker():
    """Random weights are seeded: two workers (two builds) explain the same model."""
    torch.manual_seed(123)
    first = build_model("small_cnn", 6).state_dict()
    torch.manual_seed(456)
    second = build_model("small_cnn", 6).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# ---------------------------------------------------------------- bad specs through the CLI


def spec_text(tmp_path: Path, **replace: str) -> Path:
    """A valid synthetic spec; `replace` swaps whole lines by key (`key = value` text)."""
    lines = {
        "[dataset]": None,
        "kind": '"synthetic"',
        "num_samples": "8",
        "image_size": str(SIZE),
        "[model]": None,
        "arch": '"small_cnn"',
        "num_classes": "6",
        "[attribution]": None,
        "composites": '["EpsilonPlusFlat"]',
        "[store]": None,
        "path": json.dumps(str(tmp_path / "out.zarr")),
        "[run]": None,
        "shard_size": "4",
    }
    text = []
    for key, value in lines.items():
        if value is None:
            text.append(key)
        elif key in replace:
            text.append(replace.pop(key))
        else:
            text.append(f"{key} = {value}")
    text += list(replace.values())  # whatever is left is added to [run]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(text) + "\n")
    return path


BAD_SPECS = [
    ({"shard_size": "shard_size = -1"}, ["[run] shard_size must be 0 (automatic) or positive"]),
    ({"extra": "[gpu]\ncount = 1"}, ["unknown section [gpu]"]),
    ({"arch": "arch = small_cnn"}, ["invalid TOML"]),
    ({"num_classes": "num_classes = 6\nmean = [nan, 0.5, 0.5]"}, ["[model] mean", "finite"]),
    ({"image_size": "image_size = 100000"}, ["[dataset] image_size", "100000"]),
    ({"num_samples": "num_samples = 8.5"}, ["[dataset] num_samples must be an integer"]),
    ({"composites": 'composites = ["lrp-z", "lrp-z"]'}, ["lists a composite twice"]),
    ({"extra": "workers = -1"}, ["[run] workers"]),
    ({"extra": 'dtype = "int8"'}, ["unknown key [run] dtype"]),
    ({"arch": 'arch = "resnet18"\nweights = "NO_SUCH_WEIGHTS"'}, ["NO_SUCH_WEIGHTS"]),
    ({"num_classes": "num_classes = 7"}, ["[model] num_classes = 7", "6 classes"]),
    ({"composites": 'composites = ["EpsilonPlusFlat"]\ntargets = "predicted:9"'}, ["predicted:9"]),
]


@pytest.mark.parametrize(("replace", "fragments"), BAD_SPECS)
def test_bad_specs_of_every_kind_are_found_before_anything_runs(tmp_path, replace, fragments):
    """What `heatjob submit` checks before Ray starts: load_spec, then prepare (no Ray)."""
    from heatjob.errors import SpecError
    from heatjob.job.prepare import prepare
    from heatjob.spec import load_spec

    spec = spec_text(tmp_path, **replace)
    with pytest.raises(SpecError) as info:
        prepare(load_spec(spec), progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(spec))
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_a_bad_spec_through_the_cli_exits_2_with_one_line(tmp_path):
    """The CLI's side (HeatjobError -> one line, exit 2) for a kind test_cli.py does not run;
    the other kinds are checked in-process above."""
    spec = spec_text(tmp_path, **BAD_SPECS[3][0])
    assert_one_line_error(heatjob("submit", str(spec), "-q"), "job.toml", *BAD_SPECS[3][1])
    assert not (tmp_path / "out.zarr").exists()


def test_a_checkpoint_that_is_not_a_state_dict_is_one_line(tmp_path):
    from heatjob.errors import SpecError
    from heatjob.job.prepare import prepare
    from heatjob.spec import load_spec

    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    torch.save({"head.weight": torch.zeros(3)}, tmp_path / "other.pt")
    for name, fragment in (
        ("garbage.pt", "not a torch state_dict file"),
        ("other.pt", "does not fit"),
    ):
        spec = spec_text(tmp_path, num_classes=f'num_classes = 6\ncheckpoint = "{tmp_path / name}"')
        with pytest.raises(SpecError) as info:
            prepare(load_spec(spec), progress=False)
        assert "\n" not in str(info.value) and name in str(info.value)
        assert fragment in str(info.value)


def test_foreign_stores_are_never_touched(tmp_path):
    """A folder of other files and a Zarr group that heatjob did not make: refused as a store
    to resume and as one to overwrite, byte for byte as they were (in-process: the refusal
    comes before Ray starts; the CLI's side is the slow test below)."""
    from heatjob.errors import HeatjobError
    from heatjob.job.submit import submit
    from heatjob.spec import load_spec

    precious, other = foreign_folders(tmp_path)
    for target in (precious, other):
        before = tree_digest(target)
        spec = load_spec(spec_text(tmp_path, path=f"path = {json.dumps(str(target))}"))
        for overwrite in (False, True):
            with pytest.raises(HeatjobError, match="not a heatjob store") as info:
                submit(spec, overwrite=overwrite, progress=False)
            assert str(target) in str(info.value) and "\n" not in str(info.value)
        assert tree_digest(target) == before


@pytest.mark.slow
def test_overwrite_of_a_foreign_folder_through_the_cli_is_one_line_and_touches_nothing(tmp_path):
    precious, _ = foreign_folders(tmp_path)
    before = tree_digest(precious)
    spec = spec_text(tmp_path, path=f"path = {json.dumps(str(precious))}")
    result = heatjob("submit", str(spec), "-q", "--overwrite")
    assert_one_line_error(result, str(precious), "not a heatjob store")
    assert tree_digest(precious) == before


def foreign_folders(tmp_path: Path) -> tuple[Path, Path]:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    other = tmp_path / "other.zarr"
    group = zarr.open_group(other, mode="w")
    group.create_array("data", shape=(4,), dtype="int32")[:] = [1, 2, 3, 4]
    return precious, other


# ---------------------------------------------------------------- bad samples in a real job


@pytest.mark.slow
def test_bad_samples_are_recorded_and_the_job_finishes_the_rest(tmp_path):
    """In a VOC folder: an image that does not decode, an annotation that does not parse, a
    box wholly outside its image (all three recorded as failures), a box partly outside
    (clipped, not a failure). The job exits 0, the store says which samples failed and why,
    their heatmap rows are NaN, every other row is finite, and status reports them."""
    root = make_voc_folder(tmp_path / "VOC", n=14, seed=2)
    ids = (root / "ImageSets/Main/val.txt").read_text().split()
    undecodable, unparsable, outside, clipped = ids[1], ids[3], ids[4], ids[5]
    good_jpeg = (root / "JPEGImages" / f"{undecodable}.jpg").read_bytes()
    (root / "JPEGImages" / f"{undecodable}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    xml = root / "Annotations" / f"{unparsable}.xml"
    xml.write_text(xml.read_text().replace("</object>", "</objet>", 1))
    for sample_id, shift in ((outside, 1000), (clipped, 0)):
        xml = root / "Annotations" / f"{sample_id}.xml"
        text = xml.read_text()
        width = int(text.split("<width>")[1].split("<")[0])
        xmax = text.split("<xmax>")[1].split("<")[0]
        if shift:  # move the first box right of the image
            xmin = text.split("<xmin>")[1].split("<")[0]
            text = text.replace(f"<xmin>{xmin}<", f"<xmin>{width + shift}<", 1)
            text = text.replace(f"<xmax>{xmax}<", f"<xmax>{width + shift + 10}<", 1)
        else:  # let the first box stick out on the right
            text = text.replace(f"<xmax>{xmax}<", f"<xmax>{width + 25}<", 1)
        xml.write_text(text)

    spec = spec_text(
        tmp_path,
        kind='kind = "voc"',
        num_samples=f"root = {json.dumps(str(root))}",
        num_classes="num_classes = 20",
        composites='composites = ["EpsilonPlusFlat", "lrp-eps"]',
        shard_size="shard_size = 2",
    )
    result = heatjob("submit", str(spec), "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    store = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert store["samples/id"][:].tolist() == ids
    assert store["units/done"][:].all()

    failed = store["samples/failed"][:]
    reasons = store["samples/failure"][:]
    bad = [ids.index(i) for i in (undecodable, unparsable, outside)]
    assert np.flatnonzero(failed).tolist() == sorted(bad)
    assert f"{undecodable}.jpg" in reasons[bad[0]] and "cannot read image" in reasons[bad[0]]
    assert f"{unparsable}.xml" in reasons[bad[1]] and "cannot parse" in reasons[bad[1]]
    assert f"{outside}.xml" in reasons[bad[2]] and "outside the" in reasons[bad[2]]
    assert all(reasons[s] == "" for s in range(len(ids)) if not failed[s])

    # the undecodable image still has rows (its annotation is fine): NaN, as are its logits;
    # the two samples whose annotations failed have none
    rows_sample = store["rows/sample"][:]
    assert (rows_sample == bad[0]).any()
    assert not np.isin(rows_sample, bad[1:]).any()
    for composite in ("EpsilonPlusFlat", "lrp-eps"):
        heatmaps = store[f"heatmaps/{composite}"][:]
        nan_rows = np.isnan(heatmaps).all(axis=(1, 2))
        np.testing.assert_array_equal(nan_rows, rows_sample == bad[0])
        assert np.isfinite(heatmaps[~nan_rows]).all()
    logits = store["samples/logits"][:]
    assert np.isnan(logits[bad[0]]).all()
    assert np.isfinite(np.delete(logits, bad[0], axis=0)).all()

    # the box that stuck out ends at the image's right edge: x1 = S
    first_box = np.flatnonzero(store["boxes/sample"][:] == ids.index(clipped))[0]
    assert store["boxes/xyxy"][first_box][2] == pytest.approx(SIZE)

    from typer.testing import CliRunner

    from heatjob.cli import app

    status = CliRunner().invoke(app, ["status", str(tmp_path / "out.zarr"), "--verify"])
    assert status.exit_code == 0, status.output
    assert "failures: 3 samples" in status.output
    for sample_id in (undecodable, unparsable, outside):
        assert f"    {sample_id}: " in status.output
    assert "check out" in status.output  # NaN rows verify like any other
    report = json.loads(
        CliRunner().invoke(app, ["status", str(tmp_path / "out.zarr"), "--json"]).output
    )
    assert [(f["sample"], f["id"]) for f in report["failures"]] == [
        (s, ids[s]) for s in sorted(bad)
    ]

    # merge leaves the failed sample's rows out of every metric and says how many
    from heatjob.eval.merge import merge
    from heatjob.eval.report import format_table

    merged = merge(str(tmp_path / "out.zarr"), progress=False, resamples=0)
    n_failed_rows = int((rows_sample == bad[0]).sum())
    assert merged.excluded_failed == n_failed_rows
    for composite in ("EpsilonPlusFlat", "lrp-eps"):
        assert merged.metrics[composite]["n_rows"] == len(rows_sample) - n_failed_rows
        mass = zarr.open_group(tmp_path / "out.zarr")[f"metrics/{composite}/relevance_mass"][:]
        assert np.isnan(mass[rows_sample == bad[0]]).all()
    assert f"{n_failed_rows} rows of {len(bad)} failed samples excluded" in format_table(merged)

    # the image fixed, --retry-failed redoes only the units holding it: the sample is no
    # longer failed, its rows and logits are finite, the annotation failures stay
    (root / "JPEGImages" / f"{undecodable}.jpg").write_bytes(good_jpeg)
    units_before = store["units/done"].shape[0]
    plain = heatjob("submit", str(spec), "-q")
    assert plain.returncode == 0 and "already done" in plain.stdout, plain.stderr
    retried = heatjob("submit", str(spec), "--workers", "1", "--retry-failed", "-q")
    assert retried.returncode == 0, retried.stderr
    assert f" of {units_before} units written" in retried.stdout
    redone = int(retried.stdout.split(": ", 1)[1].split(" of ")[0])
    assert 1 <= redone <= 2  # the unit of its rows, and the one owning its logits
    store = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert np.flatnonzero(store["samples/failed"][:]).tolist() == sorted(bad[1:])
    assert store["samples/failure"][bad[0]] == ""
    for composite in ("EpsilonPlusFlat", "lrp-eps"):
        assert np.isfinite(store[f"heatmaps/{composite}"][:]).all()
    assert np.isfinite(store["samples/logits"][bad[0]]).all()
    status = CliRunner().invoke(app, ["status", str(tmp_path / "out.zarr"), "--verify"])
    assert "failures: 2 samples" in status.output and "check out" in status.output
