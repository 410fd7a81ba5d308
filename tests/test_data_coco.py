"""kind = "coco": a generated COCO-layout folder read back through the reader, against
pycocotools' reading of the same file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import zarr
from factories import COCO_CATEGORIES, make_coco_folder
from pycocotools.coco import COCO

from heatjob.data import open_dataset, read_records
from heatjob.errors import DataError
from heatjob.job.prepare import prepare
from heatjob.spec import parse_spec, to_toml


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco_folder(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def oracle(coco):
    return COCO(str(coco.annotations))


def _open(coco, **options):
    return open_dataset(
        "coco", str(coco.root), "val", 0, annotations=str(coco.annotations), **options
    )


def test_classes_are_the_categories_in_ascending_id_order(coco, oracle):
    dataset = _open(coco)
    category_ids = sorted(oracle.getCatIds())
    assert dataset.classes == [c["name"] for c in oracle.loadCats(category_ids)]
    assert dataset.classes != [name for _, name in COCO_CATEGORIES]  # not the file's order


def test_boxes_crowd_flags_and_sizes_equal_pycocotools_reading(coco, oracle):
    dataset = _open(coco)
    category_index = {c: k for k, c in enumerate(sorted(oracle.getCatIds()))}
    failures: dict[int, str] = {}
    records = read_records(dataset, failures=failures)
    good = [i for i in coco.image_ids if i not in coco.malformed and i not in coco.unannotated]
    assert [int(r.id) for i, r in enumerate(records) if i not in failures] == good
    crowd_seen = clipped_seen = 0
    for index, record in enumerate(records):
        if index in failures:
            continue
        info = oracle.imgs[int(record.id)]
        assert (record.height, record.width) == (info["height"], info["width"])
        anns = oracle.loadAnns(oracle.getAnnIds(imgIds=int(record.id), iscrowd=None))
        x, y, w, h = np.array([a["bbox"] for a in anns], dtype=np.float64).T
        expected = np.stack(
            [
                np.clip(x, 0, info["width"]),
                np.clip(y, 0, info["height"]),
                np.clip(x + w, 0, info["width"]),
                np.clip(y + h, 0, info["height"]),
            ],
            axis=1,
        ).astype(np.float32)
        np.testing.assert_array_equal(record.boxes, expected)
        assert record.box_classes.tolist() == [category_index[a["category_id"]] for a in anns]
        assert record.box_difficult.tolist() == [a["iscrowd"] == 1 for a in anns]
        assert record.labels == tuple(sorted({category_index[a["category_id"]] for a in anns}))
        crowd_seen += int(record.box_difficult.sum())
        clipped_seen += int((x + w > info["width"]).sum())
    assert crowd_seen >= 1 and clipped_seen >= 1  # the layout exercised both


def test_malformed_annotations_fail_their_sample_naming_the_annotation(coco):
    dataset = _open(coco)
    failures: dict[int, str] = {}
    read_records(dataset, failures=failures)
    ids = dataset.ids()
    failed = {int(ids[i]): reason for i, reason in failures.items()}
    assert set(failed) == set(coco.malformed)
    for image_id, fragment in coco.malformed.items():
        assert fragment in failed[image_id]
        assert str(coco.annotations) in failed[image_id]
        assert f"image {image_id}, annotation " in failed[image_id]
        assert "\n" not in failed[image_id]


def test_unannotated_images_are_skipped_or_kept_by_the_spec_key(coco):
    skipped, kept = _open(coco), _open(coco, unannotated="keep")
    assert [int(i) for i in kept.ids()] == coco.image_ids  # the file's order
    assert [int(i) for i in skipped.ids()] == [
        i for i in coco.image_ids if i not in coco.unannotated
    ]
    empty = kept.record(kept.ids().index(str(coco.unannotated[0])))
    assert empty.labels == () and len(empty.boxes) == 0 and empty.height > 0


def test_a_broken_file_is_one_line_naming_it(tmp_path, coco):
    bad = tmp_path / "bad.json"
    cases = {
        "not json {": "cannot parse COCO annotations",
        json.dumps({"images": [], "annotations": []}): "'categories' missing",
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"id": 5, "image_id": 2, "bbox": [0, 0, 1, 1]}],
                "categories": [{"id": 1, "name": "a"}],
            }
        ): "annotations[0] has image_id 2",
        json.dumps(
            {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}] * 2}
        ): "category id 1 appears twice",
    }
    for text, fragment in cases.items():
        bad.write_text(text)
        with pytest.raises(DataError, match=re.escape(fragment)) as error:
            open_dataset("coco", str(coco.root), "val", 0, annotations=str(bad))
        assert str(bad) in str(error.value)
    with pytest.raises(DataError, match="not found"):
        open_dataset("coco", str(coco.root), "val", 0, annotations=str(tmp_path / "none.json"))


def _spec(coco, store, **dataset):
    return {
        "dataset": {
            "kind": "coco",
            "root": str(coco.root),
            "annotations": str(coco.annotations),
            "image_size": 32,
            **dataset,
        },
        "model": {"arch": "small_cnn", "num_classes": 0},
        "attribution": {"composites": ["EpsilonPlusFlat"], "targets": "labels"},
        "store": {"path": str(store)},
        "run": {"batch_size": 4, "shard_size": 4},
    }


def test_prepare_puts_crowd_boxes_in_the_store_arrays_with_the_difficult_flag(coco, tmp_path):
    job = prepare(parse_spec(_spec(coco, tmp_path / "s.zarr")), progress=False)
    assert job.num_classes == len(COCO_CATEGORIES)
    assert job.arrays["boxes_difficult"].sum() >= 1
    assert set(job.failures) == {job.sample_ids.tolist().index(str(i)) for i in coco.malformed}


def test_missing_annotations_key_is_a_spec_error_naming_it(coco, tmp_path):
    from heatjob.errors import SpecError

    raw = _spec(coco, tmp_path / "s.zarr")
    del raw["dataset"]["annotations"]
    with pytest.raises(SpecError, match=r"\[dataset\] annotations is required"):
        parse_spec(raw)


@pytest.mark.slow
def test_a_coco_job_through_the_cli(coco, tmp_path):
    spec = tmp_path / "coco.toml"
    store = tmp_path / "coco.zarr"
    spec.write_text(to_toml(_spec(coco, store)))
    env = {**os.environ, "RAY_ADDRESS": ""}
    cli = [sys.executable, "-m", "heatjob.cli"]
    submit = subprocess.run(
        [*cli, "submit", str(spec), "--workers", "1"], capture_output=True, text=True, env=env
    )
    assert submit.returncode == 0, submit.stderr
    merged = subprocess.run([*cli, "merge", str(store)], capture_output=True, text=True, env=env)
    assert merged.returncode == 0, merged.stderr
    root = zarr.open_group(str(store), mode="r")
    ids = [int(i) for i in root["samples/id"][:]]
    assert ids == [i for i in coco.image_ids if i not in coco.unannotated]
    failed = root["samples/failed"][:]
    assert {ids[i] for i in np.flatnonzero(failed)} == set(coco.malformed)
    oracle = COCO(str(coco.annotations))
    crowd = sum(
        a["iscrowd"] == 1
        for a in oracle.dataset["annotations"]
        if a["image_id"] not in coco.malformed
    )
    assert int(root["boxes/difficult"][:].sum()) == crowd
    assert root.attrs["heatjob"]["classes"] == [
        c["name"] for c in oracle.loadCats(sorted(oracle.getCatIds()))
    ]
    heatmaps = root["heatmaps/EpsilonPlusFlat"][:]
    scored = ~failed[root["rows/sample"][:]]
    assert np.isfinite(heatmaps[scored]).all() and np.isnan(heatmaps[~scored]).all()
    assert "EpsilonPlusFlat" in root.attrs["metrics"]


def test_a_missing_annotations_file_is_a_spec_error_naming_the_key(coco, tmp_path):
    from heatjob.errors import SpecError

    raw = _spec(coco, tmp_path / "s.zarr", annotations=str(tmp_path / "gone.json"))
    with pytest.raises(SpecError, match=r"\[dataset\] annotations: no such file or folder"):
        prepare(parse_spec(raw), progress=False)
