"""The job spec: defaults, and one clear line for every class of mistake."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from heatjob.errors import SpecError
from heatjob.spec import load_spec, parse_spec, to_toml, with_overrides

MINIMAL = {
    "dataset": {"kind": "synthetic"},
    "model": {"arch": "small_cnn"},
    "attribution": {"composites": ["EpsilonPlusFlat"]},
    "store": {"path": "out/x.zarr"},
}


def spec_with(section: str, key: str, value) -> dict:
    raw = copy.deepcopy(MINIMAL)
    raw.setdefault(section, {})[key] = value
    return raw


def test_defaults_are_the_contracts():
    spec = parse_spec(MINIMAL)
    assert spec.dataset.image_size == 224 and spec.dataset.split == "val"
    assert spec.dataset.limit == 0
    assert spec.model.mean == (0.485, 0.456, 0.406) and spec.model.std == (0.229, 0.224, 0.225)
    assert spec.attribution.targets == "labels"
    assert spec.store.dtype == "float16"
    assert spec.run.batch_size == 32 and spec.run.workers == 0


def test_round_trip_through_dict():
    spec = parse_spec(spec_with("attribution", "targets", "predicted:3"))
    again = parse_spec(spec.to_dict())
    assert again == spec.__class__(**{**again.__dict__, "source": spec.source})
    assert again.attribution.predicted_k == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (spec_with("dataset", "colour", 1), "unknown key [dataset] colour"),
        ({**MINIMAL, "extra": {}}, "unknown section [extra]"),
        ({k: v for k, v in MINIMAL.items() if k != "model"}, "missing section [model]"),
        (spec_with("model", "arch", 3), "[model] arch must be a string"),
        (spec_with("run", "batch_size", "8"), "[run] batch_size must be an integer"),
        (spec_with("run", "batch_size", True), "[run] batch_size must be an integer"),
        (spec_with("run", "batch_size", 0), "[run] batch_size must be positive"),
        (spec_with("model", "mean", [0.5, 0.5]), "[model] mean must have 3 values"),
        (spec_with("model", "std", "abc"), "[model] std must be a list of numbers"),
        (spec_with("dataset", "kind", "kitti"), "[dataset] kind must be one of"),
        (spec_with("dataset", "kind", "voc"), "[dataset] root is required"),
        (spec_with("attribution", "targets", "top5"), "[attribution] targets must be"),
        (spec_with("attribution", "targets", "predicted:0"), "needs K >= 1"),
        (spec_with("attribution", "composites", []), "at least one composite"),
        (spec_with("store", "dtype", "int8"), "[store] dtype must be one of"),
        (spec_with("run", "device", "tpu"), "[run] device must be one of"),
    ],
)
def test_each_mistake_names_its_key(raw, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source="jobs/x.toml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("jobs/x.toml: ")
    assert "\n" not in message


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="spec file not found: .*nope.toml"):
        load_spec(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[dataset\nkind = 1")
    with pytest.raises(SpecError, match="broken.toml: invalid TOML"):
        load_spec(broken)


def test_overrides_replace_only_what_is_given():
    spec = parse_spec(MINIMAL)
    changed = with_overrides(spec, store={"path": "elsewhere.zarr"}, run={})
    assert changed.store.path == "elsewhere.zarr"
    assert changed.run == spec.run and changed.dataset == spec.dataset


def test_content_ignores_where_and_how_fast():
    spec = parse_spec(MINIMAL)
    moved = with_overrides(spec, store={"path": "b.zarr"}, run={"workers": 4, "batch_size": 2})
    assert moved.content_dict() == spec.content_dict()
    other = with_overrides(spec, attribution={"targets": "all"})
    assert other.content_dict() != spec.content_dict()


def test_to_toml_reads_back_as_the_same_tables():
    tables = load_spec(Path("jobs/demo.toml")).to_dict()
    tables["store"]["storage_options"] = {"endpoint_url": "http://s3:9000", "odd key": 1.5}
    tables["model"]["mean"] = [0.5, -0.25, 1e-05]
    assert tomllib.loads(to_toml(tables)) == tables
