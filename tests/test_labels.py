"""The classes present in each sample as (sample, class) pairs (heatjob.job.plan.Labels):
what planning reads and samples/labels is written from, a few chunks at a time, so the
(N, C) matrix is never whole in the driver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from factories import synthetic_spec

from heatjob.job.plan import Labels, plan_rows
from heatjob.job.prepare import job_from_arrays
from heatjob.store import layout, schema
from heatjob.store.layout import create_store

LISTS = [(3, 1, 3), (), (0,), (2, 5)]


def matrix_of(lists, n_classes):
    matrix = np.zeros((len(lists), n_classes), dtype=bool)
    for i, classes in enumerate(lists):
        matrix[i, list(classes)] = True
    return matrix


def test_pairs_from_lists_are_sorted_without_repeats_and_match_the_matrix():
    labels = Labels.of(LISTS, 6)
    pairs = list(zip(labels.sample.tolist(), labels.klass.tolist(), strict=True))
    assert pairs == [(0, 1), (0, 3), (2, 0), (3, 2), (3, 5)]
    assert labels.shape == (4, 6)
    matrix = matrix_of(LISTS, 6)
    from_matrix = Labels.of(matrix, 6)
    np.testing.assert_array_equal(from_matrix.sample, labels.sample)
    np.testing.assert_array_equal(from_matrix.klass, labels.klass)
    for a, b in [(0, 4), (0, 0), (0, 2), (1, 4), (3, 4), (1, 2)]:
        np.testing.assert_array_equal(labels.dense(a, b), matrix[a:b])


def test_pairs_in_any_order_give_the_same_labels():
    labels = Labels.from_pairs(4, 6, [3, 0, 2, 0, 3, 0], [5, 3, 0, 1, 2, 3])
    np.testing.assert_array_equal(labels.dense(), matrix_of(LISTS, 6))


@pytest.mark.parametrize("bad", [6, -1])
def test_a_class_outside_the_classes_is_refused(bad):
    with pytest.raises(ValueError, match=r"outside 0 \.\. 5"):
        Labels.of([(0,), (bad,)], 6)


@pytest.mark.parametrize("targets", ["labels", "all", "predicted:2"])
def test_rows_from_pairs_are_rows_from_the_matrix(targets):
    rng = np.random.default_rng(3)
    matrix = rng.random((40, 5)) < 0.3
    skip = rng.random(40) < 0.2
    by_pairs = plan_rows(Labels.of(matrix, 5), targets, 5, skip)
    expected_sample, expected_target = np.nonzero(matrix & ~skip[:, None])
    if targets == "labels":
        np.testing.assert_array_equal(by_pairs[0], expected_sample)
        np.testing.assert_array_equal(by_pairs[1], expected_target)
    else:
        per = 5 if targets == "all" else 2
        np.testing.assert_array_equal(by_pairs[0], np.repeat(np.flatnonzero(~skip), per))


def test_samples_labels_written_a_few_chunks_at_a_time_read_back_whole(tmp_path, monkeypatch):
    """Chunks of 4 samples, 2 chunks per write: the array reads back as the matrix, and
    the chunks of samples without a label are not written at all."""
    monkeypatch.setattr(layout, "_BLOCK", 4)
    monkeypatch.setattr(layout, "_LABEL_BYTES", 4 * 5 * 2)
    rng = np.random.default_rng(0)
    matrix = rng.random((23, 5)) < 0.4
    matrix[:, 0] = True
    matrix[8:16] = False  # chunks 2 and 3: one whole write without a label
    job = job_from_arrays(synthetic_spec(tmp_path / "s.zarr", shard=4), Labels.of(matrix, 5))
    create_store(job)
    array = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")[schema.SAMPLE_LABELS]
    assert array.chunks == (4, 5) and array.dtype == bool
    np.testing.assert_array_equal(array[:], matrix)
    chunk_dir = Path(tmp_path / "s.zarr" / schema.SAMPLE_LABELS / "c")
    written = sorted(int(p.parent.name) for p in chunk_dir.glob("*/0"))
    assert written == [0, 1, 4, 5]
