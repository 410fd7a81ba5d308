"""Tests for heatjob.eval.metrics: hand-computed cases and independent naive references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from heatjob.eval import metrics as M

# ----------------------------------------------------------------------------- helpers


def _naive_box_mask(boxes, size):
    out = np.zeros((size, size), dtype=bool)
    for y in range(size):
        for x in range(size):
            cx, cy = x + 0.5, y + 0.5
            for x0, y0, x1, y1 in boxes:
                if x0 <= cx < x1 and y0 <= cy < y1:
                    out[y, x] = True
    return out


def _naive_rank(h, m):
    flat, mf = h.ravel(), m.ravel()
    k = int(mf.sum())
    if k == 0:
        return 0.0
    order = sorted(range(flat.size), key=lambda i: (-float(flat[i]), i))  # row-major ties
    return sum(bool(mf[i]) for i in order[:k]) / k


def _naive_mass(h, m):
    pos_total = 0.0
    inside = 0.0
    for v, inm in zip(h.ravel().tolist(), m.ravel().tolist(), strict=True):
        if v > 0:
            pos_total += v
            if inm:
                inside += v
    return inside / pos_total if pos_total > 0 else 0.0


def _sk_ap(m, h):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found" for empty masks
        return average_precision_score(m.ravel().astype(int), h.ravel().astype(np.float64))


def _devkit_ap(det_boxes, det_scores, det_sample, gt_boxes, gt_sample, gt_difficult, thr=0.5):
    """Classic VOC devkit voc_eval, written out independently (half-open box areas)."""
    recs = {}
    for b, s, d in zip(gt_boxes, gt_sample, gt_difficult, strict=True):
        r = recs.setdefault(int(s), {"bbox": [], "difficult": [], "det": []})
        r["bbox"].append(list(b))
        r["difficult"].append(bool(d))
        r["det"].append(False)
    npos = sum(not d for d in gt_difficult)
    if npos == 0:
        return float("nan")
    order = sorted(range(len(det_scores)), key=lambda i: -det_scores[i])  # stable
    nd = len(order)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d, i in enumerate(order):
        r = recs.get(int(det_sample[i]))
        bb = det_boxes[i]
        ovmax, jmax = -1.0, -1
        if r is not None:
            for j, g in enumerate(r["bbox"]):
                iw = min(bb[2], g[2]) - max(bb[0], g[0])
                ih = min(bb[3], g[3]) - max(bb[1], g[1])
                inter = max(iw, 0.0) * max(ih, 0.0)
                uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
                ov = inter / uni if uni > 0 else 0.0
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= thr:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


# --------------------------------------------------------------------------- box_masks


def test_box_masks_half_pixel_boundaries():
    # S=4. Box (0.5, 0.5, 1.5, 1.5): centre 0.5 satisfies 0.5 <= 0.5, centre 1.5 fails 1.5 < 1.5
    # -> only pixel (0, 0). Box (0.6, 0, 1.6, 1): x centre 0.5 < 0.6 out, 1.5 in; y centre 0.5 in
    # -> only pixel (y=0, x=1).
    m = M.box_masks([np.array([[0.5, 0.5, 1.5, 1.5]]), np.array([[0.6, 0.0, 1.6, 1.0]])], 4)
    want0 = np.zeros((4, 4), bool)
    want0[0, 0] = True
    want1 = np.zeros((4, 4), bool)
    want1[0, 1] = True
    assert m.dtype == bool and m.shape == (2, 4, 4)
    np.testing.assert_array_equal(m[0], want0)
    np.testing.assert_array_equal(m[1], want1)


def test_box_masks_border_several_boxes_and_empty():
    # Row 0: border box (2, 2, 4, 4) -> pixels y, x in {2, 3}; plus box (3, 3, 9, 9) running past
    # the border adds nothing new; box (0, 0, 1, 1) -> (0, 0). Row 1: a 0.3-px box holds no
    # pixel centre -> empty. Row 2: the whole image.
    boxes = [
        np.array([[2, 2, 4, 4], [3, 3, 9, 9], [0, 0, 1, 1]], np.float32),
        np.array([[1.1, 1.1, 1.4, 1.4]]),
        np.array([[0, 0, 4, 4]]),
    ]
    m = M.box_masks(boxes, 4)
    want = np.zeros((4, 4), bool)
    want[2:, 2:] = True
    want[0, 0] = True
    np.testing.assert_array_equal(m[0], want)
    assert not m[1].any()
    assert m[2].all()


def test_box_masks_against_naive():
    rng = np.random.default_rng(0)
    s = 7
    boxes = []
    for _ in range(40):
        b = rng.integers(0, 2 * s + 3, size=(rng.integers(1, 4), 4)) / 2.0 - 1.0  # half pixels
        b[:, 2:] = b[:, :2] + np.abs(b[:, 2:] - b[:, :2])
        boxes.append(b)
    m = M.box_masks(boxes, s)
    for i, b in enumerate(boxes):
        np.testing.assert_array_equal(m[i], _naive_box_mask(b, s), err_msg=str(b))


# ------------------------------------------------------------------------ pointing game


def _one_hot_map(s, y, x, dtype=np.float32):
    h = np.zeros((s, s), dtype)
    h[y, x] = 1.0
    return h


def test_pointing_game_tolerance_with_non_square_image():
    # S=4, original H=128, W=256: one heatmap pixel is 64 px wide and 32 px tall. The max at
    # (y=0, x=0) has its centre at (32, 16) in the original. Box (41/64, 28/32, 4, 4) maps to
    # x >= 41, y >= 28: dx = 9, dy = 12, distance exactly 15 -> hit. Box starting at 42/64:
    # dx = 10, distance sqrt(244) = 15.62 -> miss.
    # A box (1.5/64 + 0.5 ... ) to the right only: x0 = (32 + 14.9)/64 -> 14.9 hit; 15.1 miss.
    # With the scales swapped (H/S for x) the first box would be 13.1 px away in x: always hit.
    h = np.stack([_one_hot_map(4, 0, 0)] * 4)
    boxes = [
        np.array([[41 / 64, 28 / 32, 4, 4]]),
        np.array([[42 / 64, 28 / 32, 4, 4]]),
        np.array([[(32 + 14.9) / 64, 0, 4, 1]]),
        np.array([[(32 + 15.1) / 64, 0, 4, 1]]),
    ]
    sizes = np.array([[128, 256]] * 4)
    hits = M.pointing_game_hits(h, boxes, sizes)
    np.testing.assert_array_equal(hits, [True, False, True, False])
    # Vertical: centre y = 16; box y0 = (16 + 14.9)/32 -> hit, (16 + 15.1)/32 -> miss.
    boxes_v = [np.array([[0, (16 + 14.9) / 32, 1, 4]]), np.array([[0, (16 + 15.1) / 32, 1, 4]])]
    hits_v = M.pointing_game_hits(h[:2], boxes_v, sizes[:2])
    np.testing.assert_array_equal(hits_v, [True, False])
    # A bigger tolerance turns the misses into hits.
    assert M.pointing_game_hits(h[:2], boxes[:2], sizes[:2], tolerance=16.0).all()


def test_pointing_game_ties_zero_maps_several_boxes():
    s = 4
    sizes = np.array([[400, 400]] * 4)  # 100 original px per heatmap pixel
    tie = np.zeros((s, s), np.float16)
    tie[0, 3] = tie[3, 0] = 2.0  # first maximum in row-major order: (y=0, x=3)
    zero = np.zeros((s, s), np.float16)  # constant: no maximum to point with -> miss
    neg = -np.ones((s, s), np.float16)
    neg[2, 1] = -0.5  # the maximum of an all-negative map still points: centre (150, 250)
    h = np.stack([tie, tie, zero, neg])
    boxes = [
        np.array([[3, 0, 4, 1]]),  # contains (0, 3)'s centre -> hit
        np.array([[0, 3, 1, 4]]),  # only near (3, 0), 2 pixels = 200 px away -> miss
        np.array([[3, 3, 4, 4], [0, 0, 0.5, 0.5]]),  # would hold argmax (0, 0)'s centre, yet miss
        np.array([[2.2, 2, 4, 4], [0, 0, 1, 1]]),  # nearest: x 220 - 150 = 70 away -> miss
    ]
    hits = M.pointing_game_hits(h, boxes, sizes)
    np.testing.assert_array_equal(hits, [True, False, False, False])


def test_pointing_game_against_naive():
    rng = np.random.default_rng(1)
    n, s = 60, 6
    h = rng.integers(0, 4, size=(n, s, s)).astype(np.float32)  # many ties
    sizes = rng.integers(20, 200, size=(n, 2))
    boxes = []
    for _ in range(n):
        b = rng.uniform(0, s, size=(rng.integers(1, 4), 4))
        b[:, 2:] = b[:, :2] + rng.uniform(0, 2, size=(len(b), 2))
        boxes.append(b)
    hits = M.pointing_game_hits(h, boxes, sizes, tolerance=10.0)
    for i in range(n):
        flat = h[i].ravel().tolist()
        k = flat.index(max(flat))
        y, x = divmod(k, s)
        hgt, wid = sizes[i]
        px, py = (x + 0.5) * wid / s, (y + 0.5) * hgt / s
        best = math.inf
        for x0, y0, x1, y1 in boxes[i]:
            qx = min(max(px, x0 * wid / s), x1 * wid / s)  # nearest point of the rectangle
            qy = min(max(py, y0 * hgt / s), y1 * hgt / s)
            best = min(best, math.hypot(px - qx, py - qy))
        assert hits[i] == (best <= 10.0), i


def test_pointing_game_rejects_row_without_boxes():
    with pytest.raises(ValueError):
        M.pointing_game_hits(np.zeros((1, 2, 2)), [np.zeros((0, 4))], np.array([[2, 2]]))


# ------------------------------------------------------------------------ relevance mass


def test_relevance_mass_hand():
    # map [[2, -1], [1, 1]], mask = top row: R+ = 2, 0, 1, 1; total 4, inside 2 -> mu = 0.5;
    # mu_w = 0.5 * 4 / 2 = 1.0.  All-zero and all-negative maps -> 0.  Full mask -> mu = 1,
    # mu_w = 1.  Empty mask -> 0 and 0.
    h = np.array(
        [
            [[2, -1], [1, 1]],
            [[0, 0], [0, 0]],
            [[-1, -2], [-3, -1]],
            [[0.5, 0], [0.25, -1]],
            [[1, 1], [1, 1]],
        ],
        np.float16,
    )
    top = np.array([[1, 1], [0, 0]], bool)
    m = np.stack([top, top, top, np.ones((2, 2), bool), np.zeros((2, 2), bool)])
    np.testing.assert_allclose(M.relevance_mass(h, m), [0.5, 0, 0, 1, 0])
    np.testing.assert_allclose(M.relevance_mass_weighted(h, m), [1.0, 0, 0, 1, 0])


def test_relevance_mass_weighted_small_box():
    # S=4, mask one pixel holding 3 of 6 units of R+ -> mu = 0.5, mu_w = 0.5 * 16 / 1 = 8.
    h = np.zeros((1, 4, 4))
    h[0, 3, 3] = 3
    h[0, 0, 0] = 3
    m = np.zeros((1, 4, 4), bool)
    m[0, 3, 3] = True
    np.testing.assert_allclose(M.relevance_mass_weighted(h, m), [8.0])


def test_relevance_mass_against_naive():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((50, 9, 9)).astype(np.float32)
    h[::7] = -np.abs(h[::7])  # some all-negative maps
    m = rng.random((50, 9, 9)) < rng.random((50, 1, 1))
    got = M.relevance_mass(h, m)
    want = [_naive_mass(h[i].astype(np.float64), m[i]) for i in range(50)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    area = m.reshape(50, -1).sum(1)
    want_w = [w * 81 / a if a else 0.0 for w, a in zip(want, area, strict=True)]
    np.testing.assert_allclose(M.relevance_mass_weighted(h, m), want_w, rtol=1e-12)


# ------------------------------------------------------------------------ relevance rank


def test_relevance_rank_hand_ties():
    # map [[1, 1], [1, 0]]; pixels by value, ties row-major: (0,0), (0,1), (1,0), (1,1).
    # mask {(1,0)}, K=1: top-1 = (0,0) -> 0.      mask {(0,1), (1,0)}, K=2: (0,0), (0,1) -> 1/2.
    # mask {(0,0)}: 1.   all-zero map, mask {(1,1)}: top-1 = (0,0) -> 0.   full mask -> 1.
    # empty mask -> 0.   all-negative [[-3,-1],[-2,-1]], mask {(1,1)}: K=1, top-1 = (0,1) -> 0;
    # mask {(0,1),(1,1)}: K=2 -> both -1 pixels -> 1.
    a = np.array([[1, 1], [1, 0]], np.float32)
    z = np.zeros((2, 2), np.float32)
    neg = np.array([[-3, -1], [-2, -1]], np.float32)
    h = np.stack([a, a, a, z, a, a, neg, neg])
    masks = np.zeros((8, 2, 2), bool)
    masks[0, 1, 0] = True
    masks[1, 0, 1] = masks[1, 1, 0] = True
    masks[2, 0, 0] = True
    masks[3, 1, 1] = True
    masks[4] = True
    masks[6, 1, 1] = True
    masks[7, 0, 1] = masks[7, 1, 1] = True
    np.testing.assert_allclose(M.relevance_rank(h, masks), [0, 0.5, 1, 0, 1, 0, 0, 1])


def test_relevance_rank_against_naive():
    rng = np.random.default_rng(3)
    for dtype in (np.float16, np.float32, np.float64):
        h = rng.integers(-3, 4, size=(40, 6, 6)).astype(dtype)  # heavy ties
        h[::2] += rng.standard_normal((20, 6, 6)).astype(dtype)
        m = rng.random((40, 6, 6)) < rng.random((40, 1, 1))
        got = M.relevance_rank(h, m)
        want = [_naive_rank(h[i], m[i]) for i in range(40)]
        np.testing.assert_allclose(got, want, err_msg=str(dtype))


# ---------------------------------------------------------------------------- pixel AP


def test_pixel_ap_hand_ties():
    # scores [[2, 2], [1, 0]], labels [[1, 0], [1, 0]]. Thresholds: 2 -> 2 pixels, 1 positive:
    # P = 1/2, R = 1/2; 1 -> 3 pixels, 2 positives: P = 2/3, R = 1. AP = .5*.5 + .5*2/3 = 7/12.
    # (Breaking the tie in row-major order would give .5*1 + .5*2/3 = 5/6 instead.)
    # All-zero map, 1-pixel mask: one threshold, P = 1/4, R = 1 -> 1/4. Full mask -> 1.
    # Empty mask -> 0 (sklearn's value). scores [3, 2, 2, 1], labels [1, 0, 1, 0]:
    # 3: P=1, R=.5; 2: P=2/3, R=1 -> 5/6.
    h = np.array(
        [[[2, 2], [1, 0]], [[0, 0], [0, 0]], [[5, 1], [2, 0]], [[5, 1], [2, 0]], [[3, 2], [2, 1]]],
        np.float32,
    )
    m = np.array(
        [[[1, 0], [1, 0]], [[0, 0], [0, 1]], [[1, 1], [1, 1]], [[0, 0], [0, 0]], [[1, 0], [1, 0]]],
        bool,
    )
    np.testing.assert_allclose(M.pixel_average_precision(h, m), [7 / 12, 0.25, 1, 0, 5 / 6])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_pixel_ap_matches_sklearn(dtype):
    rng = np.random.default_rng(4)
    for case in range(50):
        s = int(rng.integers(2, 12))
        h = rng.standard_normal((3, s, s))
        if case % 3 == 1:
            h = np.round(h * 2) / 2  # quantised: many ties
        elif case % 3 == 2:
            h = rng.integers(-2, 3, size=h.shape).astype(np.float64)  # heavy ties, zeros
        h[0, 0, 0] = -0.0  # -0.0 and 0.0 are one threshold
        h = h.astype(dtype)
        m = rng.random(h.shape) < rng.random()
        got = M.pixel_average_precision(h, m)
        want = [_sk_ap(m[i], h[i]) for i in range(3)]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"case {case}")


def test_pixel_ap_blocks_of_rows():
    # More rows than one block holds (S=300: about 23 rows a block).
    rng = np.random.default_rng(5)
    h = np.round(rng.standard_normal((30, 300, 300)), 1).astype(np.float16)
    m = np.zeros(h.shape, bool)
    m[:, 100:200, 50:250] = True
    got = M.pixel_average_precision(h, m)
    for i in (0, 22, 23, 29):
        assert got[i] == pytest.approx(_sk_ap(m[i], h[i]), abs=1e-12)


# ------------------------------------------------------------------------ heatmap boxes


def test_heatmap_boxes_hand():
    s = 5
    # Row 0: R+ = 4 at (y=0,x=0), 3 at (4,4), 2 at (2,1), 1 at (0,4); total 10, half = 5.
    # Top set: 4 (held 4 < 5), then 3 (held 7 >= 5) -> pixels (0,0) and (4,4): x and y span
    # 0..4 -> (0, 0, 5, 5). Negative values never count.
    r0 = np.full((s, s), -5.0)
    r0[0, 0], r0[4, 4], r0[2, 1], r0[0, 4] = 4.0, 3.0, 2.0, 1.0
    # Row 1: all zero -> whole image. Row 2: all negative -> whole image.
    # Row 3: single positive pixel (y=2, x=3) -> (3, 2, 4, 3).
    r3 = np.zeros((s, s))
    r3[2, 3] = 0.1
    # Row 4: 6 at (1,1) holds 6 of 10 >= 5 -> just (1, 1, 2, 2); 4 at (3,3) is not needed.
    r4 = np.zeros((s, s))
    r4[1, 1], r4[3, 3] = 6.0, 4.0
    # Row 5: a tie: 2 at (3,4) and (4,4) and (0,0): total 6, half 3; the first 2 holds 2 < 3,
    # the second reaches 4 >= 3, and the third ties with it -> all three -> (0, 0, 5, 5).
    r5 = np.zeros((s, s))
    r5[3, 4] = r5[4, 4] = r5[0, 0] = 2.0
    # Row 6: a column on the right border, rows 3-4, equal values -> (4, 3, 5, 5).
    r6 = np.zeros((s, s))
    r6[3:, 4] = 1.0
    h = np.stack([r0, np.zeros((s, s)), -np.ones((s, s)), r3, r4, r5, r6]).astype(np.float16)
    got = M.heatmap_boxes(h)
    want = [
        [0, 0, 5, 5],
        [0, 0, 5, 5],
        [0, 0, 5, 5],
        [3, 2, 4, 3],
        [1, 1, 2, 2],
        [0, 0, 5, 5],
        [4, 3, 5, 5],
    ]
    np.testing.assert_array_equal(got, want)


def _naive_heatmap_box(h: np.ndarray, share: float = 0.5) -> tuple:
    positive = np.clip(h.astype(np.float64), 0, None)
    total = positive.sum()
    if total <= 0:
        return (0.0, 0.0, float(h.shape[1]), float(h.shape[0]))
    held, chosen = 0.0, []
    for value in sorted(positive.ravel(), reverse=True):
        chosen.append(value)
        held += value
        if held >= share * total:
            break
    ys, xs = np.nonzero((positive >= chosen[-1]) & (positive > 0))
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_heatmap_boxes_against_naive_loop():
    rng = np.random.default_rng(6)
    h = rng.standard_normal((60, 8, 8)).astype(np.float32)
    h[::9] = -np.abs(h[::9])
    h[5] = 0
    h[7] = np.round(h[7])  # ties
    got = M.heatmap_boxes(h)
    for i in range(60):
        assert tuple(got[i]) == _naive_heatmap_box(h[i]), i


# -------------------------------------------------------------------------------- VOC AP


def test_voc_ap_hand():
    # GT: sample 0: A (0,0,10,10), B (20,20,30,30) difficult; sample 1: C (0,0,10,10). npos = 2.
    # d1 .9 s0 (0,0,10,10): IoU 1 with A -> TP.  d2 .8 s0 same box: A taken -> FP.
    # d3 .7 s0 (20,20,30,30): difficult B -> ignored.  d4 .6 s1 (5,0,15,10): IoU 50/150 -> FP.
    # d5 .5 s1 (0,0,10,9): IoU .9 -> TP.  d6 .4 s2: no GT -> FP.
    # Counted: TP FP FP TP FP; recall .5 .5 .5 1 1; precision 1 .5 1/3 .5 .4.
    # Envelope: 1 up to recall .5, .5 up to recall 1 -> AP = .5*1 + .5*.5 = .75.
    # (Counting d3 as FP would give .5 + .5*.4 = .7.)
    det = np.array(
        [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10], [0, 0, 10, 9], [0] * 4],
        float,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    dsample = np.array([0, 0, 0, 1, 1, 2])
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    gsample = np.array([0, 0, 1])
    diff = np.array([False, True, False])
    assert M.voc_average_precision(det, scores, dsample, gt, gsample, diff) == pytest.approx(0.75)
    # shuffled input order gives the same answer
    p = np.array([3, 0, 5, 1, 4, 2])
    ap = M.voc_average_precision(det[p], scores[p], dsample[p], gt, gsample, diff)
    assert ap == pytest.approx(0.75)


def test_voc_ap_edges():
    gt = np.array([[0, 0, 10, 10]], float)
    # IoU exactly 0.5 (50 / 100) counts as a match -> AP 1.
    assert M.voc_average_precision(
        np.array([[0, 0, 10, 5]], float), [1.0], [0], gt, [0], [False]
    ) == pytest.approx(1.0)
    # No detections -> 0; no GT, or only difficult GT -> nan.
    assert M.voc_average_precision(np.zeros((0, 4)), [], [], gt, [0], [False]) == 0.0
    assert math.isnan(M.voc_average_precision(gt, [1.0], [0], np.zeros((0, 4)), [], []))
    assert math.isnan(M.voc_average_precision(gt, [1.0], [0], gt, [0], [True]))
    # Tied scores keep input order: FP then TP -> precision .5 at recall 1 -> .5; TP first -> 1.
    far = np.array([[50, 50, 60, 60]], float)
    dets = np.concatenate([far, gt])
    assert M.voc_average_precision(dets, [1, 1], [0, 0], gt, [0], [False]) == pytest.approx(0.5)
    assert M.voc_average_precision(dets[::-1], [1, 1], [0, 0], gt, [0], [False]) == 1.0


def test_voc_ap_against_devkit_reference():
    rng = np.random.default_rng(7)
    for case in range(40):
        n_samples = int(rng.integers(1, 6))
        ng = int(rng.integers(0, 12))
        gxy = rng.uniform(0, 20, size=(ng, 2))
        gt = np.concatenate([gxy, gxy + rng.uniform(2, 10, size=(ng, 2))], axis=1)
        gsample = rng.integers(0, n_samples, size=ng)
        diff = rng.random(ng) < 0.25
        nd = int(rng.integers(0, 25))
        # detections: jittered copies of GT boxes plus random boxes
        base = gt[rng.integers(0, ng, size=nd)] if ng else rng.uniform(0, 20, size=(nd, 4))
        det = base + rng.normal(0, 1.5, size=(nd, 4))
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 0.5)
        dsample = rng.integers(0, n_samples + 1, size=nd)  # some samples have no GT
        scores = np.round(rng.random(nd), 1)  # ties
        got = M.voc_average_precision(det, scores, dsample, gt, gsample, diff)
        want = _devkit_ap(det, scores.tolist(), dsample, gt, gsample, diff)
        if math.isnan(want):
            assert math.isnan(got), case
        else:
            assert got == pytest.approx(want, abs=1e-12), case


# -------------------------------------------------------------------- aggregation, subset


def test_mean_over_classes():
    # class 0: (1 + 0) / 2 = .5 (nan ignored); class 1: 1; class 2: 1 -> (0.5 + 1 + 1) / 3.
    v = np.array([1.0, 0.0, np.nan, 1.0, 1.0])
    c = np.array([0, 0, 0, 1, 2])
    assert M.mean_over_classes(v, c) == pytest.approx(2.5 / 3)
    # a class whose values are all nan is not present
    assert M.mean_over_classes(np.array([np.nan, 1.0]), np.array([0, 1])) == 1.0
    assert math.isnan(M.mean_over_classes(np.array([np.nan]), np.array([3])))
    assert math.isnan(M.mean_over_classes(np.array([]), np.array([], int)))


def test_hard_subset():
    # S=4: 16 pixels, a quarter is 4. Mask of 3 pixels + other class -> hard; 4 pixels -> not;
    # 3 pixels without another class -> not; empty mask + other class -> hard.
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, :3] = True
    m[1, 0, :4] = True
    m[2, 0, :3] = True
    got = M.hard_subset(m, np.array([True, True, False, True]))
    np.testing.assert_array_equal(got, [True, False, False, True])
