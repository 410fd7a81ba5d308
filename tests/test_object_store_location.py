"""Store locations without a server: plain folders and file:// URLs through the same code."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from heatjob.errors import HeatjobError
from heatjob.job.prepare import job_from_arrays
from heatjob.spec import parse_spec
from heatjob.store.layout import create_store, open_store, provenance
from heatjob.store.location import REDACTED, Location, is_url, open_group, redact
from heatjob.store.units import finish_unit, write_unit_heatmaps


def small_store(path: str) -> None:
    n, classes = 6, 3
    labels = np.zeros((n, classes), dtype=bool)
    labels[np.arange(n), np.arange(n) % classes] = True
    spec = parse_spec(
        {
            "dataset": {"kind": "synthetic", "image_size": 8},
            "model": {"arch": "small_cnn"},
            "attribution": {"composites": ["EpsilonPlus"]},
            "store": {"path": path, "dtype": "float32"},
            "run": {"shard_size": 4},
        }
    )
    job = job_from_arrays(spec, labels, sample_ids=[f"id{i}" for i in range(n)])
    root = create_store(job)
    unit = job.plan.units[1]
    maps = np.arange(unit.n_rows * 64, dtype=np.float32).reshape(unit.n_rows, 8, 8)
    write_unit_heatmaps(path, unit, {"EpsilonPlus": maps})
    finish_unit(root, unit, range(4, 6), np.ones((2, classes), np.float32), None, ("h", "n", 7))


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_store_round_trips_through_a_folder_and_a_file_url(tmp_path, scheme):
    path = f"{scheme}{tmp_path}/deeper/job.zarr"  # parents that do not exist yet
    small_store(path)
    root, info = open_store(path)
    expected = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8)
    np.testing.assert_array_equal(root["heatmaps/EpsilonPlus"][4:6], expected)
    assert np.isnan(root["heatmaps/EpsilonPlus"][:4]).all()
    assert root["units/done"][:].tolist() == [False, True]
    assert root["units/host"][:].tolist() == ["", "h"]
    assert root["units/node"][:].tolist() == ["", "n"]
    assert root["units/pid"][:].tolist() == [-1, 7]
    # the same bytes as a plain zarr reader sees them at the folder
    plain = zarr.open_group(str(tmp_path / "deeper/job.zarr"), mode="r")
    np.testing.assert_array_equal(plain["heatmaps/EpsilonPlus"][4:6], expected)

    location = Location(path)
    assert location.names() == {"zarr.json", "samples", "boxes", "rows", "heatmaps", "units"}
    assert not location.is_file()
    location.delete()
    assert location.names() == set() and not (tmp_path / "deeper/job.zarr").exists()


def test_a_missing_store_is_one_line_and_not_created(tmp_path):
    with pytest.raises(HeatjobError, match="no Zarr store at"):
        open_store(f"file://{tmp_path}/nothing.zarr")
    assert not (tmp_path / "nothing.zarr").exists()


def test_secrets_are_redacted_at_any_depth_and_the_rest_kept():
    options = {
        "key": "AKIA",
        "secret": "s",
        "token": "t",
        "client_kwargs": {"endpoint_url": "http://x", "aws_secret_access_key": "s2"},
        "anon": False,
    }
    assert redact(options) == {
        "key": REDACTED,
        "secret": REDACTED,
        "token": REDACTED,
        "client_kwargs": {"endpoint_url": "http://x", "aws_secret_access_key": REDACTED},
        "anon": False,
    }
    assert options["secret"] == "s"  # the caller's options are untouched


def test_provenance_in_the_store_holds_no_secret(tmp_path):
    options = {"secret": "s3cr3t"}
    spec = parse_spec(
        {
            "dataset": {"kind": "synthetic"},
            "model": {"arch": "small_cnn"},
            "attribution": {"composites": ["EpsilonPlus"]},
            "store": {"path": "s3://b/k", "storage_options": options},
        }
    )
    attrs = provenance(job_from_arrays(spec, np.ones((1, 1), bool)))
    assert attrs["spec"]["store"]["storage_options"] == {"secret": REDACTED}
    assert spec.store.storage_options == {"secret": "s3cr3t"}


def test_urls_and_unknown_protocols():
    assert is_url("s3://bucket/key") and is_url("file:///tmp/x")
    assert not is_url("out/job.zarr") and not is_url("/abs/job.zarr")
    with pytest.raises(HeatjobError, match="store path nosuch://b/k"):
        Location("nosuch://b/k")
    group = open_group("memory://heatjob-test/x.zarr", "w")
    assert isinstance(group, zarr.Group)


def test_storage_options_must_be_a_table_and_do_not_decide_resumability():
    from heatjob.errors import SpecError
    from heatjob.spec import parse_spec

    base = {
        "dataset": {"kind": "synthetic"},
        "model": {"arch": "small_cnn"},
        "attribution": {"composites": ["EpsilonPlus"]},
        "store": {"path": "s3://b/k.zarr", "storage_options": {"endpoint_url": "http://x"}},
    }
    spec = parse_spec(base, source="job.toml")
    assert spec.store.storage_options == {"endpoint_url": "http://x"}
    other = parse_spec(
        {**base, "store": {"path": "s3://b/k.zarr", "storage_options": {"anon": True}}}
    )
    assert spec.content_dict() == other.content_dict()
    with pytest.raises(SpecError, match=r"job.toml: \[store\] storage_options must be a table"):
        parse_spec({**base, "store": {"path": "x", "storage_options": "key=1"}}, source="job.toml")
