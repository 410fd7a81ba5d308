"""float16 maps are ranked by uint16 order keys (metrics.rank_rows) and sum R+ in any
order; float32 maps by their values and left-to-right sums. Both paths must give the
same numbers, bit for bit, on maps built to hit every branch: heavy ties, -0.0 beside
+0.0, constant, all-negative, NaN and Inf rows, a box cut far down the sorted row,
and totals too large for the any-order sums (> 2**28)."""

from __future__ import annotations

import numpy as np
import pytest
from test_metrics import _sk_ap

from heatjob.eval import merge
from heatjob.eval import metrics as M


def test_order_keys_sort_and_tie_exactly_like_float16_values() -> None:
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    values = np.sort(values[np.isfinite(values)])
    keys = M.rank_rows(values[None]).keys[0]
    step_v, step_k = np.diff(values.astype(np.float64)), np.diff(keys.astype(np.int64))
    assert (step_k >= 0).all()
    np.testing.assert_array_equal(step_k == 0, step_v == 0)  # -0.0 and +0.0 tie
    assert M.rank_rows(values[None]).finite[0]
    for bad in (np.inf, -np.inf, np.nan):
        assert not M.rank_rows(np.array([[1.0, bad]], np.float16)).finite[0]


def _maps(rng, n: int, s: int) -> np.ndarray:
    h = (rng.standard_normal((n, s, s)) * 3).round().astype(np.float16)  # ties
    h[1] = 0
    h[2] = -np.abs(h[2])
    h[3, 0, 0] = np.nan
    h[4, 2, 2] = np.inf
    h[5] = -0.0
    h[6, ::2] = -0.0  # -0.0 and +0.0 tied at the top
    h[7] = 5
    h[8] = rng.uniform(0, 1, (s, s)).astype(np.float16)  # flat: the box cut lies far down
    h[9] = rng.uniform(1e-7, 1e-5, (s, s)).astype(np.float16)  # subnormals
    h[10:14] = rng.uniform(2e4, 65000, (4, s, s)).astype(np.float16)  # R+ total > 2**28
    tiny = rng.uniform(-6e-6, 6e-6, (4, s, (s + 4) // 5))  # subnormals: bits to round off
    h[10:14, :, ::5] = tiny
    return h


def _geometry(rng, n: int, s: int) -> merge.RowGeometry:
    boxes, other = [], []
    for _ in range(n):
        b = np.sort(rng.uniform(-2, s + 2, (int(rng.integers(1, 4)), 2, 2)), axis=1)
        b = b.transpose(0, 2, 1).reshape(-1, 4)[:, [0, 2, 1, 3]]  # x0, y0, x1, y1
        boxes.append(b)
        other.append(b[1:])
    return merge.RowGeometry(
        rows=np.arange(n),
        sample=np.arange(n),
        target=np.zeros(n, np.int64),
        boxes=boxes,
        other_boxes=other,
        image_sizes=rng.integers(s, 3 * s, (n, 2)),
        other_class=np.array([len(o) > 0 for o in other]),
        score=np.zeros(n),
        ground_truth={},
        n_samples=n,
        n_classes=1,
    )


def test_float16_keys_and_float32_values_give_identical_metrics() -> None:
    rng = np.random.default_rng(11)
    n, s = 40, 128
    maps = _maps(rng, n, s)
    assert (np.maximum(maps[10:14].astype(np.float64), 0).sum(axis=(1, 2)) > 2**29).all()
    geometry = _geometry(rng, n, s)
    index = np.arange(n)
    keys = merge.score_block(maps, geometry, index)
    values = merge.score_block(maps.astype(np.float32), geometry, index)
    assert keys.keys() == values.keys()
    for name in keys:
        np.testing.assert_array_equal(keys[name], values[name], err_msg=name)
    assert not keys["finite"][[3, 4]].any() and keys["finite"][[0, 1, 5, 6, 10]].all()
    # the box of the flat map is wide: its cut is not in the first chunk of the row
    assert np.prod(np.diff(keys["box"][8].reshape(2, 2), axis=0)) > s * s / 4


def test_float16_pixel_ap_and_rank_against_sklearn_and_a_stable_sort() -> None:
    rng = np.random.default_rng(12)
    n, s = 30, 24
    maps = _maps(rng, n, s)
    masks = M.box_masks(_geometry(rng, n, s).boxes, s)
    ranked = M.rank_rows(maps)
    ap = M.pixel_average_precision(maps, masks, ranked)
    rank = M.relevance_rank(maps, masks, ranked)
    for i in np.flatnonzero(ranked.finite):
        h, m = maps[i].astype(np.float64).ravel(), masks[i].ravel()
        assert ap[i] == pytest.approx(_sk_ap(m, h) if m.any() else 0.0, rel=1e-12, abs=0)
        top = np.argsort(-h, kind="stable")[: m.sum()]  # ties: row-major first
        assert rank[i] == (m[top].sum() / m.sum() if m.any() else 0.0)
    assert np.isnan(ap[~ranked.finite]).all() and np.isnan(rank[~ranked.finite]).all()


def test_sums_too_large_for_any_order_go_left_to_right() -> None:
    """R+ of 9216 pixels at 65504 (> 2**29) then 2**-24 each: added left to right the
    small ones round away, so with share=1 the cut is the last large pixel: the box
    is the large square, for float16 keys as for float32 values."""
    s = 128
    h = np.full((1, s, s), 2.0**-24, np.float16)
    h[0, :96, :96] = 65504
    masks = np.zeros((1, s, s), bool)
    masks[0, 90:, 90:] = True
    for maps in (h, h.astype(np.float32)):
        np.testing.assert_array_equal(M.heatmap_boxes(maps, share=1.0), [[0, 0, 96, 96]])
    both = [masks, ~masks]
    np.testing.assert_array_equal(
        M.relevance_masses(h, both), M.relevance_masses(h.astype(np.float32), both)
    )
