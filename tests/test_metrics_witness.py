"""Second witnesses for heatjob.eval.metrics: Quantus 0.6.0 where its definition is ours, and
the cases where heatjob differs from Quantus on purpose (each one shown, README says why).

Also the non-finite and constant maps, and VOC AP with bootstrap weights against
duplicated detections through the devkit reference of test_metrics.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_metrics import _devkit_ap, _naive_mass, _sk_ap

from heatjob.eval import metrics as M

quantus = pytest.importorskip("quantus")

S = 16


def _quantus(metric_class, heatmaps, masks, **options) -> np.ndarray:
    """Score (n, S, S) heatmaps against (n, S, S) masks with a Quantus metric, no model."""
    n = len(heatmaps)
    metric = metric_class(
        disable_warnings=True, display_progressbar=False, normalise=False, abs=False, **options
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=np.zeros((n, 3, S, S), np.float32),
            y_batch=np.zeros(n, int),
            a_batch=np.asarray(heatmaps, np.float64)[:, None],
            s_batch=np.asarray(masks, np.float64)[:, None],
            channel_first=True,
        )
    return np.asarray(scores, dtype=np.float64)


def _random_boxes(rng, n, max_boxes=3):
    """Integer boxes inside the image (at least one pixel each), 1-3 per row."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, max_boxes + 1))
        x0, y0 = rng.integers(0, S - 1, size=(2, k))
        x1 = x0 + rng.integers(1, S - x0 + 1)
        y1 = y0 + rng.integers(1, S - y0 + 1)
        out.append(np.stack([x0, y0, x1, y1], axis=1).astype(np.float32))
    return out


# ------------------------------------------------------------ Quantus, same definitions


def test_relevance_mass_equals_quantus_on_positive_relevance():
    rng = np.random.default_rng(1)
    n = 40
    heatmaps = rng.random((n, S, S))
    heatmaps[heatmaps < 0.3] = 0.0  # zeros are positive relevance's neutral element
    masks = M.box_masks(_random_boxes(rng, n), S)
    ours = M.relevance_mass(heatmaps, masks)
    np.testing.assert_allclose(ours, _quantus(quantus.RelevanceMassAccuracy, heatmaps, masks))


def test_relevance_rank_equals_quantus_without_ties():
    rng = np.random.default_rng(2)
    n = 40
    heatmaps = rng.standard_normal((n, S, S))  # continuous: no ties, so no tie rule matters
    masks = M.box_masks(_random_boxes(rng, n), S)
    ours = M.relevance_rank(heatmaps, masks)
    np.testing.assert_allclose(ours, _quantus(quantus.RelevanceRankAccuracy, heatmaps, masks))


def test_pointing_game_without_tolerance_equals_quantus():
    # With integer boxes a pixel centre is never on a box edge, so "distance 0 to a box"
    # is exactly "the maximum pixel is in the box mask", Quantus's definition.
    rng = np.random.default_rng(3)
    n = 60
    heatmaps = rng.standard_normal((n, S, S))
    boxes = _random_boxes(rng, n)
    masks = M.box_masks(boxes, S)
    sizes = np.array([[S, S]] * n)
    ours = M.pointing_game_hits(heatmaps, boxes, sizes, tolerance=0.0)
    theirs = _quantus(quantus.PointingGame, heatmaps, masks)
    assert 0 < ours.sum() < n  # both outcomes occur
    np.testing.assert_array_equal(ours.astype(float), theirs)


def test_pixel_ap_equals_sklearn_on_tied_float16_maps():
    rng = np.random.default_rng(4)
    n = 30
    heatmaps = (rng.standard_normal((n, S, S)) * 4).round().astype(np.float16)  # many ties
    masks = M.box_masks(_random_boxes(rng, n), S)
    ours = M.pixel_average_precision(heatmaps, masks)
    want = [_sk_ap(m, h.astype(np.float64)) for h, m in zip(heatmaps, masks, strict=True)]
    np.testing.assert_allclose(ours, want, rtol=1e-12)


# ------------------------------------------------------- where we differ on purpose


def test_quantus_counts_an_empty_mask_as_a_pointing_game_hit_heatjob_does_not_score_it():
    heatmap = np.zeros((1, S, S))
    heatmap[0, 3, 3] = 1.0
    empty = np.zeros((1, S, S))
    assert _quantus(quantus.PointingGame, heatmap, empty)[0] == 1.0  # its NaN cast to True
    # heatjob: a row whose target has no box is not a pointing-game row at all
    with pytest.raises(ValueError, match="no target box"):
        M.pointing_game_hits(heatmap, [np.zeros((0, 4))], np.array([[S, S]]))


def test_quantus_pointing_game_takes_any_tied_maximum_heatjob_the_first():
    heatmap = np.zeros((1, S, S))
    heatmap[0, 0, 0] = heatmap[0, 9, 9] = 2.0  # tied maxima; (0, 0) first in row-major order
    boxes = [np.array([[8, 8, 12, 12]], np.float32)]  # holds (9, 9) only
    masks = M.box_masks(boxes, S)
    assert _quantus(quantus.PointingGame, heatmap, masks)[0] == 1.0
    assert not M.pointing_game_hits(heatmap, boxes, np.array([[S, S]]), tolerance=0.0)[0]


def test_a_constant_map_points_nowhere_for_heatjob_everywhere_for_quantus():
    # Quantus refuses a batch that is all zero (or all one) but scores such a row in a
    # mixed batch: every pixel ties for the maximum, so any box is "hit".
    other = np.zeros((S, S))
    other[15, 15] = 1.0
    heatmaps = np.stack([np.zeros((S, S)), np.full((S, S), 0.5), other])
    boxes = [np.array([[0, 0, 4, 4]], np.float32)] * 3
    theirs = _quantus(quantus.PointingGame, heatmaps, M.box_masks(boxes, S))
    np.testing.assert_array_equal(theirs, [1.0, 1.0, 0.0])
    ours = M.pointing_game_hits(heatmaps, boxes, np.array([[S, S]] * 3))
    np.testing.assert_array_equal(ours, [False, False, False])


def test_quantus_weighted_pointing_game_fails():
    rng = np.random.default_rng(5)
    heatmaps = rng.random((3, S, S))
    masks = M.box_masks(_random_boxes(rng, 3), S)
    with pytest.raises(Exception):  # noqa: B017 - any error: it cannot compute the score
        _quantus(quantus.PointingGame, heatmaps, masks, weighted=True)


def test_quantus_mass_counts_negative_relevance_heatjob_only_positive():
    heatmap = np.zeros((1, S, S))
    heatmap[0, 0, 0] = 3.0  # inside
    heatmap[0, 10, 10] = 1.0  # outside
    heatmap[0, 12, 12] = -2.0  # outside, negative
    masks = M.box_masks([np.array([[0, 0, 2, 2]], np.float32)], S)
    assert M.relevance_mass(heatmap, masks)[0] == pytest.approx(3 / 4)  # the paper's R+
    assert _quantus(quantus.RelevanceMassAccuracy, heatmap, masks)[0] == pytest.approx(3 / 2)


def test_quantus_attribution_localisation_weight_is_the_inverse_of_mu_w():
    rng = np.random.default_rng(6)
    n = 20
    heatmaps = rng.random((n, S, S))
    masks = M.box_masks(_random_boxes(rng, n, max_boxes=1), S)
    mu = M.relevance_mass(heatmaps, masks)
    mu_w = M.relevance_mass_weighted(heatmaps, masks)  # mu * S^2 / area
    theirs = _quantus(quantus.AttributionLocalisation, heatmaps, masks, weighted=True)
    # theirs = mu * area / size, ours mu * S^2 / area. (Quantus 0.6.0's "size" is also not
    # the image's: x_batch[2:].size = (n - 2) * 3 channels * S^2.)
    np.testing.assert_allclose(theirs * mu_w * (n - 2) * 3, mu**2, rtol=1e-6)


# --------------------------------------------------------- non-finite and constant maps


def test_nan_and_inf_maps_are_not_scored():
    rng = np.random.default_rng(7)
    heatmaps = rng.random((4, S, S)).astype(np.float32)
    heatmaps[1, 2, 3] = np.nan
    heatmaps[2, 0, 0] = np.inf
    heatmaps[3, 5, 5] = -np.inf
    boxes = [np.array([[0, 0, 8, 8]], np.float32)] * 4
    masks = M.box_masks(boxes, S)
    np.testing.assert_array_equal(M.finite_rows(heatmaps), [True, False, False, False])
    for scores in (
        M.relevance_mass(heatmaps, masks),
        M.relevance_mass_weighted(heatmaps, masks),
        M.relevance_rank(heatmaps, masks),
        M.pixel_average_precision(heatmaps, masks),
    ):
        assert np.isfinite(scores[0]) and np.isnan(scores[1:]).all()
    assert not M.pointing_game_hits(heatmaps, boxes, np.array([[S, S]] * 4))[1:].any()
    boxes_out = M.heatmap_boxes(heatmaps)
    assert np.isfinite(boxes_out[0]).all() and np.isnan(boxes_out[1:]).all()
    # the finite row is scored as if it were alone
    assert M.relevance_mass(heatmaps, masks)[0] == pytest.approx(_naive_mass(heatmaps[0], masks[0]))


def test_all_zero_and_all_negative_maps_by_hand():
    zero = np.zeros((S, S))
    negative = -np.ones((S, S))
    negative[1, 1] = -0.5  # the least negative pixel, inside the box
    heatmaps = np.stack([zero, negative])
    boxes = [np.array([[0, 0, 2, 2]], np.float32)] * 2  # 4 pixels
    masks = M.box_masks(boxes, S)
    hits = M.pointing_game_hits(heatmaps, boxes, np.array([[S, S]] * 2), tolerance=0.0)
    np.testing.assert_array_equal(hits, [False, True])  # zero: no maximum; negative: (1, 1)
    np.testing.assert_array_equal(M.relevance_mass(heatmaps, masks), [0.0, 0.0])  # no R+
    # rank, K = 4: zero map -> row-major ties take (0,0),(0,1),(0,2),(0,3): 2 in the box.
    # negative map -> (1,1) first, then ties at -1 in row-major order (0,0),(0,1),(0,2): 3.
    np.testing.assert_allclose(M.relevance_rank(heatmaps, masks), [2 / 4, 3 / 4])
    # AP: zero map is one threshold -> precision 4/256; negative -> sklearn
    ap = M.pixel_average_precision(heatmaps, masks)
    assert ap[0] == pytest.approx(4 / S**2)
    assert ap[1] == pytest.approx(_sk_ap(masks[1], negative))
    np.testing.assert_array_equal(M.heatmap_boxes(heatmaps), [[0, 0, S, S]] * 2)


# ------------------------------------------------------------- box AP with weights


def test_weighted_voc_ap_equals_duplicated_images_through_the_devkit():
    rng = np.random.default_rng(8)
    n_det, n_img = 30, 12
    det_sample = rng.integers(0, n_img, n_det)
    det_boxes = np.column_stack([rng.integers(0, 8, (n_det, 2)), rng.integers(8, 16, (n_det, 2))])
    det_scores = rng.integers(0, 5, n_det).astype(float)  # ties
    gt_sample = np.repeat(np.arange(n_img), 2)
    gt_boxes = np.column_stack(
        [rng.integers(0, 8, (2 * n_img, 2)), rng.integers(8, 16, (2 * n_img, 2))]
    )
    gt_difficult = rng.random(2 * n_img) < 0.2
    order, tp, counted = M.voc_matches(
        det_boxes, det_scores, det_sample, gt_boxes, gt_sample, gt_difficult
    )
    npos = int((~gt_difficult).sum())
    plain = M.voc_ap_from_matches(order, tp, counted, npos)
    assert plain == pytest.approx(
        _devkit_ap(det_boxes, det_scores, det_sample, gt_boxes, gt_sample, gt_difficult)
    )
    # a resample that draws each image w times: the same as w renamed copies of the image
    w_img = rng.integers(0, 3, n_img)
    copies = [(i, c) for i in range(n_img) for c in range(w_img[i])]
    new_id = {key: k for k, key in enumerate(copies)}
    dup_det = [(d, new_id[(det_sample[d], c)]) for d in order for c in range(w_img[det_sample[d]])]
    dup_gt = [
        (g, new_id[(gt_sample[g], c)])
        for g in range(len(gt_sample))
        for c in range(w_img[gt_sample[g]])
    ]
    want = _devkit_ap(
        det_boxes[[d for d, _ in dup_det]],
        det_scores[[d for d, _ in dup_det]],
        np.array([s for _, s in dup_det]),
        gt_boxes[[g for g, _ in dup_gt]],
        np.array([s for _, s in dup_gt]),
        gt_difficult[[g for g, _ in dup_gt]],
    )
    weighted_npos = float(np.sum(w_img[gt_sample] * ~gt_difficult))
    got = M.voc_ap_from_matches(order, tp, counted, weighted_npos, weights=w_img[det_sample])
    assert got == pytest.approx(want)


def test_a_shared_sort_gives_the_same_pixel_ap_and_boxes():
    rng = np.random.default_rng(9)
    heatmaps = (rng.standard_normal((12, S, S)) * 3).round().astype(np.float16)  # ties, zeros
    heatmaps[4] = -np.abs(heatmaps[4])  # no positive relevance
    heatmaps[5, 1, 1] = np.nan
    masks = M.box_masks(_random_boxes(rng, 12), S)
    ranked = M.rank_rows(heatmaps)
    np.testing.assert_array_equal(
        M.pixel_average_precision(heatmaps, masks, ranked),
        M.pixel_average_precision(heatmaps, masks),
    )
    np.testing.assert_array_equal(
        M.heatmap_boxes(heatmaps, ranked=ranked), M.heatmap_boxes(heatmaps)
    )
