"""[dataset] resize: the model's input and the boxes, against torchvision's own transforms
(v1 Resize + CenterCrop on the image, v2 on tv_tensors.BoundingBoxes for the boxes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from factories import make_voc_folder
from PIL import Image
from torchvision import transforms as T
from torchvision import tv_tensors
from torchvision.transforms import v2

from heatjob.data.geometry import input_geometry, transform_boxes
from heatjob.data.transforms import model_view, to_input
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (width, height): landscape, portrait, square, odd sides where the rounding matters
SIZES = [(500, 333), (375, 500), (300, 300), (257, 1001), (911, 229)]


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng([seed, width, height])
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize(("size", "resize_to"), [(224, 256), (224, 0), (64, 80)])
def test_crop_input_is_torchvisions_resize_then_centre_crop(width, height, size, resize_to):
    image = _image(width, height)
    short = resize_to or 256 * size // 224
    reference = T.Compose([T.Resize(short), T.CenterCrop(size)])(image)
    ours = model_view(image, size, "crop", resize_to)
    assert ours.size == (size, size)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))
    expected = T.Compose(
        [T.Resize(short), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)]
    )(image)
    torch.testing.assert_close(to_input(image, size, MEAN, STD, "crop", resize_to), expected)


@pytest.mark.parametrize(("width", "height"), SIZES[:2])
def test_squash_input_is_unchanged_torchvision_resize_to_a_square(width, height):
    image = _image(width, height)
    expected = T.Compose([T.Resize((64, 64)), T.ToTensor(), T.Normalize(MEAN, STD)])(image)
    torch.testing.assert_close(to_input(image, 64, MEAN, STD), expected, rtol=0, atol=0)


def _random_boxes(rng, width, height, n=40):
    x = np.sort(rng.uniform(0, width, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (n, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_crop_boxes_equal_torchvisions_v2_transform_of_the_same_boxes(width, height):
    rng = np.random.default_rng([width, height])
    boxes = _random_boxes(rng, width, height)
    # boxes near the edges that a centre crop cuts away entirely
    boxes = np.concatenate([boxes, [[0, 0, 3, height], [width - 3, 0, width, 3]]])
    reference = v2.Compose([v2.Resize(256), v2.CenterCrop(224)])(
        tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float64), format="XYXY", canvas_size=(height, width)
        )
    ).numpy()
    geometry = input_geometry(height, width, 224, "crop", 256)
    ours, kept = transform_boxes(boxes, height, width, geometry)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4)
    area = (reference[:, 2] - reference[:, 0]) * (reference[:, 3] - reference[:, 1])
    np.testing.assert_array_equal(kept, area > 0)
    if width != height:
        assert not kept.all()  # the long side's edge boxes are gone


def test_prepare_drops_cropped_away_boxes_keeps_labels_and_counts_them(tmp_path):
    root = make_voc_folder(tmp_path / "voc", n=12, size_range=(40, 160))
    spec = {
        "dataset": {"kind": "voc", "root": str(root), "split": "train", "image_size": 32},
        "model": {"arch": "small_cnn", "num_classes": 0},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": str(tmp_path / "s.zarr")},
    }
    squash = prepare(parse_spec(spec), progress=False)
    spec["dataset"]["resize"] = "crop"
    crop = prepare(parse_spec(spec), progress=False)
    np.testing.assert_array_equal(crop.labels.dense(), squash.labels.dense())
    n_boxes = len(squash.arrays["boxes_sample"])
    assert crop.boxes_cropped_away == n_boxes - len(crop.arrays["boxes_sample"]) > 0
    assert squash.boxes_cropped_away == 0
    xyxy = crop.arrays["boxes_xyxy"]
    assert (xyxy >= 0).all() and (xyxy <= 32).all()
    assert ((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])).all()


@pytest.mark.parametrize(
    ("dataset", "fragment"),
    [
        ({"resize": "letterbox"}, "[dataset] resize must be squash or crop"),
        ({"resize_to": 256}, "[dataset] resize_to applies to resize"),
        ({"resize": "crop", "resize_to": 100}, "[dataset] resize_to must be 0 or image_size"),
    ],
)
def test_bad_resize_keys_name_the_key(dataset, fragment):
    from heatjob.errors import SpecError

    raw = {
        "dataset": {"kind": "synthetic", "image_size": 224, **dataset},
        "model": {"arch": "small_cnn"},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": "x.zarr"},
    }
    with pytest.raises(SpecError) as error:
        parse_spec(raw, source="job.toml")
    assert str(error.value).startswith(f"job.toml: {fragment}")


def test_resume_takes_a_resize_change_for_another_job_and_old_stores_for_squash(tmp_path):
    from heatjob.errors import HeatjobError
    from heatjob.job.state import store_state
    from heatjob.store.layout import create_store

    spec = {
        "dataset": {"kind": "synthetic", "num_samples": 4, "image_size": 32},
        "model": {"arch": "small_cnn", "num_classes": 0},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": str(tmp_path / "s.zarr")},
    }
    squash = prepare(parse_spec(spec), progress=False)
    root = create_store(squash)
    spec["dataset"]["resize"] = "crop"
    with pytest.raises(HeatjobError, match=r"\[dataset\] resize is 'squash' there, 'crop' here"):
        store_state(prepare(parse_spec(spec), progress=False))
    # a store made before these keys existed records none of them: it is a squash job
    attrs = dict(root.attrs["heatjob"])
    attrs["spec"] = {**attrs["spec"], "dataset": dict(attrs["spec"]["dataset"])}
    for key in ("annotations", "synsets", "unannotated", "resize", "resize_to"):
        del attrs["spec"]["dataset"][key]
    root.attrs["heatjob"] = attrs
    assert len(store_state(squash).pending) == len(squash.plan.units)


def test_render_draws_the_cropped_input_the_model_saw_and_status_counts_lost_boxes(tmp_path):
    from heatjob.store.layout import create_store, open_store
    from heatjob.view.render import _input_images

    root = make_voc_folder(tmp_path / "voc", n=4, size_range=(40, 160))
    spec = {
        "dataset": {
            "kind": "voc",
            "root": str(root),
            "split": "train",
            "image_size": 32,
            "resize": "crop",
            "resize_to": 40,
        },
        "model": {"arch": "small_cnn", "num_classes": 0},
        "attribution": {"composites": ["EpsilonPlusFlat"]},
        "store": {"path": str(tmp_path / "s.zarr")},
    }
    job = prepare(parse_spec(spec), progress=False)
    create_store(job)
    _, info = open_store(spec["store"]["path"])
    from heatjob.store.status import job_status

    status = job_status(spec["store"]["path"])
    assert status["boxes_cropped_away"] == job.boxes_cropped_away > 0
    printed = subprocess.run(
        [sys.executable, "-m", "heatjob.cli", "status", spec["store"]["path"]],
        capture_output=True,
        text=True,
    )
    assert printed.returncode == 0, printed.stderr
    assert f"boxes cropped away: {job.boxes_cropped_away} " in printed.stdout
    notes: list[str] = []
    drawn = _input_images(info, [0, 1], notes)
    assert notes == []
    for sample in (0, 1):
        with Image.open(root / "JPEGImages" / f"{job.sample_ids[sample]}.jpg") as image:
            expected = T.Compose([T.Resize(40), T.CenterCrop(32)])(image.convert("RGB"))
        np.testing.assert_array_equal(drawn[sample], np.asarray(expected))
