"""A data set's annotations read block by block, in the driver and in Ray tasks
(heatjob.job.annotations): both give what the per-sample reader gives, sample by sample,
a broken annotation included, with box rows that name their sample across block edges."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from factories import make_voc_folder

from heatjob.data import open_job_dataset, read_records
from heatjob.data.geometry import input_geometry, transform_boxes
from heatjob.job import annotations
from heatjob.job.runner import map_tasks
from heatjob.spec import parse_spec


def voc_job(tmp_path):
    root = make_voc_folder(tmp_path / "VOC", n=14, seed=4)
    spec = parse_spec(
        {
            "dataset": {"kind": "voc", "root": str(root), "split": "val", "image_size": 32},
            "model": {"arch": "small_cnn", "num_classes": 20},
            "attribution": {"composites": ["EpsilonPlusFlat"]},
            "store": {"path": str(tmp_path / "s.zarr")},
        },
        source="test",
    )
    dataset = open_job_dataset(spec)
    broken = dataset.annotation_path(2)
    broken.write_text(broken.read_text()[:40])
    return spec, dataset


def expected_arrays(spec, dataset):
    """The per-sample reader's records, turned into the arrays by hand."""
    failures: dict[int, str] = {}
    records = read_records(dataset, failures=failures)
    ds = spec.dataset
    labels = np.zeros((len(records), 20), bool)
    boxes, owners = [], []
    for i, record in enumerate(records):
        labels[i, list(record.labels)] = True
        geometry = input_geometry(
            record.height, record.width, ds.image_size, ds.resize, ds.resize_to
        )
        xyxy, kept = transform_boxes(record.boxes, record.height, record.width, geometry)
        boxes += xyxy[kept].tolist()
        owners += [i] * int(kept.sum())
    return records, failures, labels, np.array(boxes, np.float32), np.array(owners)


def check(notes, spec, dataset):
    records, failures, labels, boxes, owners = expected_arrays(spec, dataset)
    assert notes.ids.tolist() == [r.id for r in records]
    assert notes.failures == failures and list(failures) == [2]
    np.testing.assert_array_equal(notes.labels(labels.shape[1]).dense(), labels)
    np.testing.assert_array_equal(notes.sizes, [(r.height, r.width) for r in records])
    np.testing.assert_array_equal(notes.boxes_sample, owners)
    np.testing.assert_allclose(notes.boxes_xyxy, boxes)
    assert len(notes.boxes_class) == len(notes.boxes_difficult) == len(owners)


def test_blocks_in_the_driver_read_what_the_per_sample_reader_reads(tmp_path, monkeypatch):
    spec, dataset = voc_job(tmp_path)
    monkeypatch.setattr(annotations, "BLOCK_SAMPLES", 3)
    check(annotations.read_annotations(dataset, spec, 20), spec, dataset)


@pytest.mark.slow
def test_blocks_in_ray_tasks_read_what_the_per_sample_reader_reads(tmp_path, monkeypatch):
    spec, dataset = voc_job(tmp_path)
    monkeypatch.setattr(annotations, "BLOCK_SAMPLES", 3)
    monkeypatch.setattr(annotations, "ON_CLUSTER_FROM", 5)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        used = []

        def on_cluster():
            used.append(True)
            return lambda fn, items, on_result: map_tasks(fn, items, 2, on_result=on_result)

        notes = annotations.read_annotations(dataset, spec, 20, on_cluster=on_cluster)
    finally:
        ray.shutdown()
    assert used == [True]
    check(notes, spec, dataset)
