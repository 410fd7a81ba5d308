"""Data set readers against files written here: VOC, image folders, synthetic shapes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import annotation_xml, make_voc_folder, plan_voc_samples
from PIL import Image
from torchvision import transforms

from heatjob.data import (
    VOC_CLASSES,
    Dataset,
    SampleRecord,
    open_dataset,
    read_records,
    scale_boxes,
)
from heatjob.data.synthetic import SHAPE_CLASSES, generate_sample
from heatjob.data.transforms import to_input
from heatjob.errors import DataError, HeatjobError

# ---------------------------------------------------------------- VOC


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return make_voc_folder(tmp_path_factory.mktemp("voc"), n=6, seed=0)


def _expected(sample) -> dict:
    objects = sample.objects
    return {
        "boxes": np.array(
            [(o.xmin - 1, o.ymin - 1, o.xmax, o.ymax) for o in objects], dtype=np.float32
        ).reshape(-1, 4),
        "classes": np.array([VOC_CLASSES.index(o.name) for o in objects], dtype=np.int32),
        "difficult": np.array([o.difficult for o in objects], dtype=bool),
        "labels": tuple(sorted({VOC_CLASSES.index(o.name) for o in objects})),
    }


def test_voc_factory_folder_reads_back_as_planned(voc_root):
    plan = plan_voc_samples(6, 0)
    for split, planned in (("train", plan[:3]), ("val", plan[3:])):
        dataset = open_dataset("voc", str(voc_root), split, 0)
        assert isinstance(dataset, Dataset)
        assert dataset.has_boxes and dataset.classes == list(VOC_CLASSES)
        assert len(dataset) == len(planned)
        assert dataset.ids() == [sample.id for sample in planned]
        records = read_records(dataset)
        for index, (record, sample) in enumerate(zip(records, planned, strict=True)):
            expected = _expected(sample)
            assert record == dataset.record(index)
            assert record.id == sample.id
            assert (record.height, record.width) == (sample.height, sample.width)
            assert record.labels == expected["labels"]
            np.testing.assert_array_equal(record.boxes, expected["boxes"])
            np.testing.assert_array_equal(record.box_classes, expected["classes"])
            np.testing.assert_array_equal(record.box_difficult, expected["difficult"])
            assert record.boxes.dtype == np.float32 and record.box_classes.dtype == np.int32
            image = dataset.load_image(index)
            assert image.mode == "RGB" and image.size == (sample.width, sample.height)


def test_voc_first_sample_by_hand(voc_root):
    """Non-square, two dogs (one at the corner), a difficult person whose <part> is ignored."""
    record = open_dataset("voc", str(voc_root), "train", 0).record(0)
    assert (record.height, record.width) == (60, 120)
    dog, person = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")
    assert record.labels == (dog, person)
    np.testing.assert_array_equal(record.box_classes, [person, dog, dog])
    np.testing.assert_array_equal(record.box_difficult, [True, False, False])
    # dog at xmin = ymin = 1, xmax = 120 // 3, ymax = 60 // 2 (1-based inclusive)
    np.testing.assert_array_equal(record.boxes[1], [0, 0, 40, 30])


def test_voc_box_conversion_float_coordinates_and_missing_size(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    Image.new("RGB", (500, 375)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><object><name> cat </name>"
        "<bndbox><xmin>1</xmin><ymin>2.0</ymin><xmax>273.0</xmax><ymax>375</ymax></bndbox>"
        "</object></annotation>"
    )
    record = open_dataset("voc", str(root), "val", 0).record(0)
    assert (record.height, record.width) == (375, 500)  # from the JPEG header
    np.testing.assert_array_equal(record.boxes, [[0.0, 1.0, 273.0, 375.0]])
    assert record.labels == (VOC_CLASSES.index("cat"),)
    assert not record.box_difficult[0]


def test_voc_limit_and_per_class_split_format(voc_root):
    plan = plan_voc_samples(6, 0)
    ids = [sample.id for sample in plan]
    order = sorted(ids, reverse=True)
    lines = [
        f"{sample_id} {' ' if k % 2 else ''}{1 if k % 2 else -1}"
        for k, sample_id in enumerate(order)
    ]
    split = voc_root / "ImageSets" / "Main" / "dog_custom.txt"
    split.write_text("\n" + "\n".join(lines[:3]) + "\n\n  \n" + "\n".join(lines[3:]) + "\n")
    dataset = open_dataset("voc", str(voc_root), "dog_custom", 0)
    assert dataset.ids() == order
    limited = open_dataset("voc", str(voc_root), "dog_custom", 2)
    assert len(limited) == 2 and limited.ids() == order[:2]
    assert [r.id for r in read_records(limited)] == order[:2]
    sample = plan[ids.index(order[1])]
    np.testing.assert_array_equal(limited.record(1).boxes, _expected(sample)["boxes"])
    assert len(open_dataset("voc", str(voc_root), "dog_custom", 100)) == 6


def _voc_copy(tmp_path: Path, n: int = 2) -> Path:
    return make_voc_folder(tmp_path / "VOC", n=n, seed=3)


def _assert_data_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert isinstance(error.value, HeatjobError)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_voc_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        open_dataset("voc", str(missing), "val", 0)
    _assert_data_error(error, str(missing))

    root = _voc_copy(tmp_path)
    with pytest.raises(DataError) as error:
        open_dataset("voc", str(root), "test", 0)
    _assert_data_error(error, str(root / "ImageSets" / "Main" / "test.txt"))

    dataset = open_dataset("voc", str(root), "train", 0)
    xml_path = root / "Annotations" / f"{dataset.ids()[0]}.xml"
    text = xml_path.read_text()
    name = text.split("<name>")[1].split("</name>")[0]
    xml_path.write_text(text.replace(f"<name>{name}</name>", "<name>unicorn</name>", 1))
    with pytest.raises(DataError) as error:
        dataset.record(0)
    _assert_data_error(error, str(xml_path), "unicorn")
    with pytest.raises(DataError):
        read_records(dataset)

    xml_path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError) as error:
        dataset.record(0)
    _assert_data_error(error, str(xml_path))

    xml_path.unlink()
    with pytest.raises(DataError) as error:
        dataset.record(0)
    _assert_data_error(error, str(xml_path))

    image_path = root / "JPEGImages" / f"{dataset.ids()[0]}.jpg"
    image_path.unlink()
    with pytest.raises(DataError) as error:
        dataset.load_image(0)
    _assert_data_error(error, str(image_path))


def test_voc_reads_annotation_text_written_by_factory():
    sample = plan_voc_samples(3, 5)[1]
    text = annotation_xml(sample)
    assert ".0</xmin>" in text and "<difficult>" not in text


def test_open_dataset_rejects_unknown_kind_and_negative_limit(tmp_path):
    with pytest.raises(DataError, match="kitti"):
        open_dataset("kitti", str(tmp_path), "val", 0)
    with pytest.raises(DataError, match="limit"):
        open_dataset("synthetic", "", "", -1)


# ---------------------------------------------------------------- image folder


def test_imagefolder(tmp_path):
    root = tmp_path / "folder"
    files = {
        "zebra": [("b.JPG", (40, 30), "RGB"), ("a.png", (20, 25), "L")],
        "ant": [("x.jpeg", (16, 16), "RGB"), ("w.BMP", (33, 17), "RGB")],
    }
    for class_name, images in files.items():
        (root / class_name).mkdir(parents=True)
        for file_name, size, mode in images:
            fmt = {".jpg": "JPEG", ".png": "PNG", ".jpeg": "JPEG", ".bmp": "BMP"}
            Image.new(mode, size, 128).save(
                root / class_name / file_name, fmt[Path(file_name).suffix.lower()]
            )
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "readme.md").write_text("not a class")

    dataset = open_dataset("imagefolder", str(root), "ignored", 0)
    assert dataset.classes == ["ant", "zebra"] and not dataset.has_boxes
    assert dataset.ids() == ["ant/w", "ant/x", "zebra/a", "zebra/b"]
    records = read_records(dataset)
    assert [r.labels for r in records] == [(0,), (0,), (1,), (1,)]
    assert [(r.height, r.width) for r in records] == [(17, 33), (16, 16), (25, 20), (30, 40)]
    for record in records:
        assert record.boxes.shape == (0, 4) and record.boxes.dtype == np.float32
        assert record.box_classes.shape == (0,) and record.box_difficult.shape == (0,)
    image = dataset.load_image(2)
    assert image.mode == "RGB" and image.size == (20, 25)
    assert open_dataset("imagefolder", str(root), "", 3).ids() == dataset.ids()[:3]

    with pytest.raises(DataError) as error:
        open_dataset("imagefolder", str(tmp_path / "absent"), "", 0)
    _assert_data_error(error, str(tmp_path / "absent"))
    (root / "zebra" / "b.JPG").write_bytes(b"broken")
    with pytest.raises(DataError) as error:
        dataset.record(3)
    _assert_data_error(error, str(root / "zebra" / "b.JPG"))


# ---------------------------------------------------------------- synthetic


def _pixels(dataset, index: int) -> np.ndarray:
    return np.asarray(dataset.load_image(index)).astype(np.int16)


def test_synthetic_is_deterministic_and_seeded():
    first = open_dataset("synthetic", "", "", 0, num_samples=12, seed=7, image_size=48)
    again = open_dataset("synthetic", "", "", 0, num_samples=12, seed=7, image_size=48)
    other = open_dataset("synthetic", "", "", 0, num_samples=12, seed=8, image_size=48)
    assert first.classes == list(SHAPE_CLASSES) and len(first.classes) == 6
    assert len(first) == 12 and first.ids()[3] == "synthetic-000003"
    assert read_records(first) == read_records(again)
    assert read_records(first) != read_records(other)
    # any sample alone, in any order, from a fresh instance
    for index in (11, 0, 5):
        fresh = open_dataset("synthetic", "", "", 0, num_samples=12, seed=7, image_size=48)
        np.testing.assert_array_equal(_pixels(fresh, index), _pixels(first, index))
        assert fresh.record(index) == first.record(index)
    assert not np.array_equal(_pixels(first, 0), _pixels(other, 0))
    assert len(open_dataset("synthetic", "", "", 4, num_samples=12)) == 4


def test_synthetic_record_and_image_agree():
    dataset = open_dataset("synthetic", "", "", 0, num_samples=40, seed=1, image_size=64)
    counts = np.zeros(6, dtype=int)
    for index in range(len(dataset)):
        record = dataset.record(index)
        image = dataset.load_image(index)
        assert image.mode == "RGB" and image.size == (64, 64)
        assert (record.height, record.width) == (64, 64)
        assert 1 <= len(record.boxes) <= 3
        assert record.labels == tuple(sorted(set(record.box_classes.tolist())))
        assert not record.box_difficult.any()
        x0, y0, x1, y1 = record.boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 64).all()
        sides = np.maximum(x1 - x0, y1 - y0)
        assert ((sides >= 0.15 * 64 - 1) & (sides <= 0.40 * 64 + 1)).all()
        np.add.at(counts, record.box_classes, 1)
    assert (counts > 0).all()


def _assert_tight(pixels: np.ndarray, box: np.ndarray) -> None:
    """Each side of the box not at the image border: a strong step between the pixel line just
    inside and the one just outside, and smooth background between the two lines outside."""
    size = pixels.shape[0]
    x0, y0, x1, y1 = (int(v) for v in box)
    for axis, start, stop, lo, hi in ((0, x0, x1, y0, y1), (1, y0, y1, x0, x1)):
        # axis 0: top/bottom sides (lines are rows over columns start:stop)
        for inside, outside, further in ((lo, lo - 1, lo - 2), (hi - 1, hi, hi + 1)):
            if not (0 <= further < size):
                continue

            def line(at, axis=axis, start=start, stop=stop):
                return pixels[at, start:stop] if axis == 0 else pixels[start:stop, at]

            step = np.abs(line(inside) - line(outside)).max(axis=-1)
            background = np.abs(line(outside) - line(further)).max(axis=-1)
            assert step.max() >= 50, (box, inside)
            assert background.max() <= 35, (box, outside)


def test_synthetic_boxes_are_tight_around_the_shapes():
    for seed in (0, 3):
        dataset = open_dataset("synthetic", "", "", 0, num_samples=30, seed=seed, image_size=64)
        for index in range(len(dataset)):
            pixels = _pixels(dataset, index)
            for box in dataset.record(index).boxes:
                _assert_tight(pixels, box)


def test_synthetic_tightness_check_catches_loose_and_shrunk_boxes():
    pixels, boxes, _ = generate_sample(0, 0, 64)
    pixels = pixels.astype(np.int16)
    box = boxes[0]
    caught = 0
    for delta in (np.array([-1, -1, 1, 1]), np.array([1, 1, -1, -1])):
        moved = np.clip(box + delta, 0, 64)
        try:
            _assert_tight(pixels, moved)
        except AssertionError:
            caught += 1
    assert caught == 2


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(DataError, match="image_size"):
        open_dataset("synthetic", "", "", 0, image_size=8)
    with pytest.raises(DataError, match="num_samples"):
        open_dataset("synthetic", "", "", 0, num_samples=0)


# ---------------------------------------------------------------- boxes and inputs


def test_scale_boxes():
    boxes = np.array([[0, 0, 500, 375], [9, 19, 273, 200]], dtype=np.float32)
    scaled = scale_boxes(boxes, height=375, width=500, size=224)
    assert scaled.dtype == np.float32 and scaled.shape == (2, 4)
    np.testing.assert_allclose(scaled[0], [0, 0, 224, 224])
    np.testing.assert_allclose(
        scaled[1], [9 * 224 / 500, 19 * 224 / 375, 273 * 224 / 500, 200 * 224 / 375], rtol=1e-6
    )
    assert scale_boxes(np.zeros((0, 4), np.float32), 10, 20, 8).shape == (0, 4)


def test_voc_boxes_to_heatmap_pixels_follow_the_contract(voc_root):
    record = open_dataset("voc", str(voc_root), "train", 0).record(0)
    xmin, ymin, xmax, ymax = 1, 1, 40, 30  # the corner dog, 1-based inclusive
    scaled = scale_boxes(record.boxes, record.height, record.width, 64)[1]
    sx, sy = 64 / record.width, 64 / record.height
    np.testing.assert_allclose(scaled, [(xmin - 1) * sx, (ymin - 1) * sy, xmax * sx, ymax * sy])


@pytest.mark.parametrize(
    ("size", "mode", "image_size"), [(32, "RGB", (50, 37)), (24, "L", (13, 9))]
)
def test_to_input_matches_torchvision(size, mode, image_size):
    rng = np.random.default_rng(0)
    shape = image_size[::-1] + ((3,) if mode == "RGB" else ())
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    assert image.mode == mode
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    reference = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )(image.convert("RGB"))
    tensor = to_input(image, size, mean, std)
    assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
    assert torch.equal(tensor, reference)


def test_sample_record_normalises_and_freezes_arrays():
    record = SampleRecord("a", 10, 20, (3,), [[1, 2, 3, 4]], [3], [0])
    assert record.boxes.dtype == np.float32 and record.boxes.shape == (1, 4)
    assert record.box_difficult.dtype == np.bool_
    with pytest.raises(ValueError):
        record.boxes[0, 0] = 5


def test_datasets_pickle_for_workers(voc_root):
    """Workers get the data set by pickling; a copy gives the same records and pixels."""
    for dataset in (
        open_dataset("voc", str(voc_root), "val", 0),
        open_dataset("synthetic", "", "", 0, num_samples=3, seed=2, image_size=32),
    ):
        dataset.record(1)
        copy = pickle.loads(pickle.dumps(dataset))
        assert read_records(copy) == read_records(dataset)
        np.testing.assert_array_equal(_pixels(copy, 1), _pixels(dataset, 1))
