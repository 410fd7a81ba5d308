"""Rows, units and logits ownership: every row in exactly one unit, every sample owned once."""

from __future__ import annotations

import numpy as np
import pytest

from heatjob.job.plan import PENDING_TARGET, make_plan, owned_samples, plan_rows


def test_label_rows_are_by_sample_then_class():
    rows_sample, rows_target = plan_rows([(3, 1), (), (0,), (2, 2, 5)], "labels", 6)
    assert rows_sample.tolist() == [0, 0, 2, 3, 3]
    assert rows_target.tolist() == [1, 3, 0, 2, 5]


def test_all_and_predicted_rows():
    rows_sample, rows_target = plan_rows([(1,), (2,)], "all", 3)
    assert rows_sample.tolist() == [0, 0, 0, 1, 1, 1]
    assert rows_target.tolist() == [0, 1, 2, 0, 1, 2]
    rows_sample, rows_target = plan_rows([(1,), (2,)], "predicted:2", 3)
    assert rows_sample.tolist() == [0, 0, 1, 1]
    assert (rows_target == PENDING_TARGET).all()


@pytest.mark.parametrize("targets", ["labels", "all", "predicted:3"])
@pytest.mark.parametrize("shard_size", [1, 4, 7, 64])
def test_units_cover_rows_once_and_samples_are_owned_once(targets, shard_size):
    rng = np.random.default_rng(shard_size)
    labels = [tuple(rng.choice(5, size=rng.integers(0, 4), replace=False)) for _ in range(40)]
    plan = make_plan(labels, targets, 5, shard_size)
    covered = np.concatenate([np.arange(u.row_start, u.row_stop) for u in plan.units])
    assert covered.tolist() == list(range(plan.n_rows))
    assert all(u.n_rows == plan.shard_size for u in plan.units[:-1])
    owned = [s for u in plan.units for s in owned_samples(u, plan.rows_sample, len(labels))]
    assert owned == list(range(len(labels)))
    for unit in plan.units:
        rows = plan.rows_sample[unit.row_start : unit.row_stop]
        assert unit.sample_start == rows[0] and unit.sample_stop == rows[-1] + 1
        if targets != "labels":  # a unit never splits a sample's rows
            assert plan.shard_size % (5 if targets == "all" else 3) == 0
            assert (np.bincount(rows)[rows] == (5 if targets == "all" else 3)).all()


@pytest.mark.parametrize("targets", ["labels", "all", "predicted:2"])
def test_rows_from_a_label_matrix_match_rows_from_label_lists(targets):
    """Planning from an (N, C) matrix (what tests and benchmarks pass) is planning from
    per-sample class lists, written out by hand here."""
    rng = np.random.default_rng(7)
    matrix = rng.random((50, 4)) < 0.3
    skip = rng.random(50) < 0.2
    rows_sample, rows_target = plan_rows(matrix, targets, 4, skip)
    expected = []
    for i in range(50):
        if skip[i]:
            continue
        if targets == "labels":
            expected += [(i, c) for c in range(4) if matrix[i, c]]
        elif targets == "all":
            expected += [(i, c) for c in range(4)]
        else:
            expected += [(i, PENDING_TARGET)] * 2
    assert list(zip(rows_sample.tolist(), rows_target.tolist(), strict=True)) == expected
    assert rows_sample.dtype == np.int64 and rows_target.dtype == np.int32
