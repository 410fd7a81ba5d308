"""[attribution.methods.<name>] tables: parsed, defaults resolved, every mistake one line
naming the key; resume sees a changed parameter as another job."""

from __future__ import annotations

import copy

import pytest

from heatjob.errors import SpecError
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec, to_toml

MINIMAL = {
    "dataset": {"kind": "synthetic", "num_samples": 4, "image_size": 32},
    "model": {"arch": "small_cnn"},
    "attribution": {"composites": ["EpsilonPlusFlat"]},
    "store": {"path": "out/x.zarr"},
}


def with_methods(**methods) -> dict:
    raw = copy.deepcopy(MINIMAL)
    raw["attribution"]["methods"] = methods
    return raw


def test_defaults_are_resolved_and_sources_are_composites_then_methods():
    spec = parse_spec(
        with_methods(
            ig={"kind": "integrated-gradients"},
            grad={"kind": "gradient"},
            gxi={"kind": "gradient-x-input"},
            sg={"kind": "smoothgrad", "noise": 0.2},
            cam={"kind": "gradcam", "layer": "features.10"},
        )
    )
    methods = spec.attribution.methods
    assert methods["ig"] == {"kind": "integrated-gradients", "steps": 16}
    assert methods["grad"] == {"kind": "gradient"}
    assert methods["sg"] == {"kind": "smoothgrad", "samples": 20, "noise": 0.2, "seed": 0}
    assert methods["cam"] == {"kind": "gradcam", "layer": "features.10"}
    assert spec.attribution.sources == ("EpsilonPlusFlat", "ig", "grad", "gxi", "sg", "cam")
    # the stored spec (to_dict, as in the store's provenance) and TOML read back the same
    assert parse_spec(spec.to_dict()).attribution == spec.attribution
    assert "methods" in to_toml(spec.to_dict())


def test_methods_alone_are_enough():
    raw = with_methods(grad={"kind": "gradient"})
    raw["attribution"].pop("composites")
    assert parse_spec(raw).attribution.sources == ("grad",)


def test_a_changed_parameter_changes_the_job_content():
    a = parse_spec(with_methods(ig={"kind": "integrated-gradients", "steps": 8}))
    b = parse_spec(with_methods(ig={"kind": "integrated-gradients", "steps": 9}))
    default = parse_spec(with_methods(ig={"kind": "integrated-gradients", "steps": 16}))
    implicit = parse_spec(with_methods(ig={"kind": "integrated-gradients"}))
    assert a.content_dict() != b.content_dict()
    assert default.content_dict() == implicit.content_dict()


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        ({"m": {"kind": "rise"}}, "[attribution.methods.m] kind must be one of"),
        ({"m": {"steps": 4}}, "[attribution.methods.m] kind is missing"),
        ({"m": "gradient"}, "[attribution.methods.m] must be a table"),
        ({"m": {"kind": "gradient", "steps": 4}}, "[attribution.methods.m] unknown key 'steps'"),
        (
            {"m": {"kind": "integrated-gradients", "step": 4}},
            "[attribution.methods.m] unknown key 'step'",
        ),
        (
            {"m": {"kind": "integrated-gradients", "steps": 0}},
            "[attribution.methods.m] steps must be 1 to 4096",
        ),
        (
            {"m": {"kind": "integrated-gradients", "steps": "16"}},
            "[attribution.methods.m] steps must be an integer",
        ),
        ({"m": {"kind": "smoothgrad", "samples": 0}}, "[attribution.methods.m] samples must be"),
        ({"m": {"kind": "smoothgrad", "noise": -0.1}}, "[attribution.methods.m] noise must be"),
        ({"m": {"kind": "smoothgrad", "noise": "lots"}}, "[attribution.methods.m] noise must be"),
        ({"m": {"kind": "smoothgrad", "seed": -1}}, "[attribution.methods.m] seed must be"),
        ({"m": {"kind": "smoothgrad", "seed": 1.5}}, "[attribution.methods.m] seed must be"),
        ({"m": {"kind": "gradcam", "layer": 3}}, "[attribution.methods.m] layer must be a string"),
        ({"EpsilonPlus": {"kind": "gradient"}}, "[attribution.methods.EpsilonPlus] the name is"),
        ({"lrp-z": {"kind": "gradient"}}, "[attribution.methods.lrp-z] the name is a composite"),
        ({"a/b": {"kind": "gradient"}}, "the name must be letters"),
    ],
)
def test_each_method_mistake_names_its_key(methods, expected):
    with pytest.raises(SpecError) as info:
        parse_spec(with_methods(**methods), source="jobs/x.toml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("jobs/x.toml: ")
    assert "\n" not in message


def test_gradcam_layer_is_checked_and_resolved_against_the_model():
    bad = parse_spec(with_methods(cam={"kind": "gradcam", "layer": "features.99"}), "x.toml")
    with pytest.raises(SpecError) as info:
        prepare(bad, progress=False)
    assert "[attribution.methods.cam] layer 'features.99' is not a module" in str(info.value)
    job = prepare(parse_spec(with_methods(cam={"kind": "gradcam"})), progress=False)
    # the default is written down as the path it stands for, in what the store records
    assert job.spec.attribution.methods["cam"] == {"kind": "gradcam", "layer": "features.14"}
    assert job.spec.to_dict()["attribution"]["methods"]["cam"]["layer"] == "features.14"


def test_worker_smoothgrad_does_not_depend_on_batching():
    """Through the worker's path: the same rows in batches of 2 and of 8 give the same
    SmoothGrad maps to round-off, and a rerun (a retried unit) gives them bitwise."""
    import numpy as np

    from heatjob.job.worker import UnitWorker

    raw = with_methods(sg={"kind": "smoothgrad", "samples": 4}, grad={"kind": "gradient"})
    maps = {}
    for batch in (2, 8, 8):
        raw["run"] = {"batch_size": batch}
        worker = UnitWorker(parse_spec(raw).to_dict(), "", num_classes=6)
        rows_sample = np.array([0, 0, 1, 2, 3, 3], dtype=np.int64)
        rows_target = np.array([0, 2, 1, 3, 4, 5], dtype=np.int32)
        done = worker.explain(rows_sample, rows_target)
        maps.setdefault(batch, []).append(done.heatmaps["sg"])
    a, b, c = maps[2][0], maps[8][0], maps[8][1]
    assert np.isfinite(a).all() and np.abs(a).max() > 0
    assert np.array_equal(b, c)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
