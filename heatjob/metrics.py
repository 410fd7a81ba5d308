"""Localisation metrics for heatmaps against bounding boxes (pure numpy).

Conventions shared by every function:

* A heatmap array is ``(n, S, S)`` (row, y, x), any float dtype; it may also be an
  array-like that supports ``shape`` and row slicing (a Zarr array): functions work
  through it in blocks of rows, so memory stays bounded.
* Boxes are ``(x0, y0, x1, y1)`` in heatmap pixel coordinates, half-open and 0-based:
  pixel ``(y, x)`` covers ``[x, x+1) x [y, y+1)`` and its centre is ``(x+0.5, y+0.5)``.
* A box mask holds the pixels whose centres lie inside a box (see :func:`box_masks`).
* An empty mask (a box too thin to contain a pixel centre) gives 0.0 for
  relevance mass, weighted relevance mass, relevance rank and pixel AP (the last
  is what scikit-learn returns when there is no positive label).
* A map holding NaN or +-Inf anywhere is not a heatmap that can be scored: the
  relevance functions give nan for it, :func:`pointing_game_hits` a miss and
  :func:`heatmap_boxes` a nan box; merge leaves such rows out (see :func:`finite_rows`).
* A constant map (all-zero included) has no maximum to point with: it is a
  pointing-game miss. An all-negative map still points with its largest value,
  has relevance mass 0 (no positive relevance) and is ranked by its values.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "box_masks",
    "finite_rows",
    "hard_subset",
    "heatmap_boxes",
    "mean_over_classes",
    "pixel_average_precision",
    "pointing_game_hits",
    "relevance_mass",
    "relevance_mass_weighted",
    "relevance_rank",
    "sorted_rows",
    "voc_average_precision",
    "voc_ap_from_matches",
    "voc_matches",
]

_BLOCK_ELEMENTS = 1 << 21  # about 2M pixels per block of rows


def _blocks(n: int, size: int):
    """Row ranges ``(a, b)`` that keep each block near ``_BLOCK_ELEMENTS`` pixels."""
    step = max(1, _BLOCK_ELEMENTS // max(1, size * size))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _check_pair(heatmaps, masks) -> tuple[int, int]:
    if len(heatmaps.shape) != 3 or heatmaps.shape[1] != heatmaps.shape[2]:
        raise ValueError(f"heatmaps must be (n, S, S), got {tuple(heatmaps.shape)}")
    if tuple(masks.shape) != tuple(heatmaps.shape):
        raise ValueError(
            f"masks {tuple(masks.shape)} and heatmaps {tuple(heatmaps.shape)} differ in shape"
        )
    return heatmaps.shape[0], heatmaps.shape[1]


def _score_dtype(dtype) -> np.dtype:
    """float16 -> float32 (exact); float32 and float64 stay as they are."""
    return np.result_type(dtype, np.float32)


def _flat_boxes(boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-row box arrays: ``(B, 4)`` float64 and the count per row."""
    arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
    counts = np.array([len(b) for b in arrays], dtype=np.int64)
    if len(arrays) and counts.min() < 1:
        raise ValueError(f"row {int(np.argmin(counts))} has no target box")
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 4))
    return flat, counts


def _finite(h: np.ndarray) -> np.ndarray:
    """(r,) bool for a block reshaped to (r, pixels): no NaN and no +-Inf."""
    return np.isfinite(h).all(axis=1)


def finite_rows(heatmaps) -> np.ndarray:
    """(n,) bool: the rows that hold no NaN and no +-Inf (scorable maps)."""
    n, s = heatmaps.shape[0], heatmaps.shape[1]
    out = np.ones(n, dtype=bool)
    for a, b in _blocks(n, s):
        out[a:b] = _finite(np.asarray(heatmaps[a:b]).reshape(b - a, -1))
    return out


# --------------------------------------------------------------------------- masks


def box_masks(boxes: list[np.ndarray], size: int) -> np.ndarray:
    """(n, S, S) bool: the union of each row's box masks.

    Pixel ``(y, x)`` is in when its centre satisfies ``x0 <= x+0.5 < x1`` and
    ``y0 <= y+0.5 < y1`` for some box of the row, i.e. ``x`` runs over
    ``[ceil(x0-0.5), ceil(x1-0.5))`` clipped to ``[0, S)``.
    """
    flat, counts = _flat_boxes(boxes)
    n = len(counts)
    out = np.zeros((n, size, size), dtype=bool)
    if n == 0:
        return out
    lo = np.clip(np.ceil(flat[:, :2] - 0.5), 0, size).astype(np.int64)  # xs, ys
    hi = np.clip(np.ceil(flat[:, 2:] - 0.5), 0, size).astype(np.int64)  # xe, ye
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grid = np.arange(size)
    # slot k = the k-th box of every row that has more than k boxes
    for k in range(int(counts.max())):
        rows = np.nonzero(counts > k)[0]
        idx = starts[rows] + k
        xm = (grid >= lo[idx, 0, None]) & (grid < hi[idx, 0, None])
        ym = (grid >= lo[idx, 1, None]) & (grid < hi[idx, 1, None])
        out[rows] |= ym[:, :, None] & xm[:, None, :]
    return out


def hard_subset(masks, sample_has_other_class: np.ndarray) -> np.ndarray:
    """(n,) bool: the pointing game's difficult rows (Zhang et al. 2016).

    The sample holds another class too and the target's mask covers less than a
    quarter of the ``S*S`` pixels.
    """
    masks = np.asarray(masks, dtype=bool)
    n, s = masks.shape[0], masks.shape[1]
    covered = masks.reshape(n, -1).sum(axis=1)
    return np.asarray(sample_has_other_class, dtype=bool) & (4 * covered < s * s)


# ---------------------------------------------------------------------- pointing game


def pointing_game_hits(heatmaps, boxes, image_sizes, tolerance: float = 15.0) -> np.ndarray:
    """(n,) bool: does each heatmap's maximum point at a target box?

    The maximum pixel is the first maximum in row-major order (``np.argmax`` of the
    flattened map). A constant map (all zero, say) and a map with NaN or +-Inf do not
    point anywhere: a miss. The maximum's centre is
    mapped to original-image coordinates ``((x+0.5)*W/S, (y+0.5)*H/S)``, the boxes to
    ``(x*W/S, y*H/S)``; a hit is a Euclidean distance <= ``tolerance`` original pixels
    from the nearest box, taken as a filled rectangle (distance 0 inside).
    """
    n = heatmaps.shape[0]
    s = heatmaps.shape[1]
    flat, counts = _flat_boxes(boxes)
    if len(counts) != n:
        raise ValueError(f"{len(counts)} box arrays for {n} heatmaps")
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(n, 2)
    if n == 0:
        return np.zeros(0, dtype=bool)
    arg = np.empty(n, dtype=np.int64)
    points = np.empty(n, dtype=bool)
    for a, b in _blocks(n, s):
        h = np.asarray(heatmaps[a:b]).reshape(b - a, -1)
        h = h.astype(_score_dtype(h.dtype), copy=False)
        arg[a:b] = np.argmax(h, axis=1)
        points[a:b] = _finite(h) & (h.max(axis=1) > h.min(axis=1))
    y, x = np.divmod(arg, s)
    sy = sizes[:, 0] / s  # original pixels per heatmap pixel, vertically
    sx = sizes[:, 1] / s
    px = (x + 0.5) * sx
    py = (y + 0.5) * sy
    row = np.repeat(np.arange(n), counts)
    bx0, by0 = flat[:, 0] * sx[row], flat[:, 1] * sy[row]
    bx1, by1 = flat[:, 2] * sx[row], flat[:, 3] * sy[row]
    dx = np.maximum(np.maximum(bx0 - px[row], px[row] - bx1), 0.0)
    dy = np.maximum(np.maximum(by0 - py[row], py[row] - by1), 0.0)
    dist = np.hypot(dx, dy)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nearest = np.minimum.reduceat(dist, starts)
    return (nearest <= tolerance) & points


# ------------------------------------------------------------------- relevance mass


def relevance_mass(heatmaps, masks) -> np.ndarray:
    """(n,) the paper's mu: sum of R+ inside the mask / sum of R+.

    R+ = max(R, 0). A map without positive relevance (all zero or all negative)
    gives 0.0; a map with NaN or +-Inf gives nan. Sums are taken in float64.
    """
    n, s = _check_pair(heatmaps, masks)
    out = np.zeros(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        h = np.asarray(heatmaps[a:b]).reshape(b - a, -1)
        pos = np.maximum(h.astype(_score_dtype(h.dtype), copy=False), 0)
        m = np.asarray(masks[a:b], dtype=bool).reshape(b - a, -1)
        total = pos.sum(axis=1, dtype=np.float64)
        inside = np.where(m, pos, 0).sum(axis=1, dtype=np.float64)
        finite = _finite(h)
        ok = (total > 0) & finite
        out[a:b][ok] = inside[ok] / total[ok]
        out[a:b][~finite] = np.nan
    return out


def relevance_mass_weighted(heatmaps, masks, mass: np.ndarray | None = None) -> np.ndarray:
    """(n,) the paper's mu_w = mu * (S*S / mask size): 1.0 is chance for a uniform map.

    An empty mask gives 0.0 (mu is 0 there and no size can be divided by); a map
    with NaN or +-Inf gives nan. ``mass``: mu when the caller has it already.
    """
    n, s = _check_pair(heatmaps, masks)
    mu = relevance_mass(heatmaps, masks) if mass is None else np.asarray(mass, np.float64)
    area = np.empty(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        area[a:b] = np.asarray(masks[a:b], dtype=bool).reshape(b - a, -1).sum(axis=1)
    out = np.where(np.isnan(mu), np.nan, 0.0)
    ok = area > 0
    out[ok] = mu[ok] * (s * s) / area[ok]
    return out


def relevance_rank(heatmaps, masks) -> np.ndarray:
    """(n,) share of the K highest-relevance pixels that lie in the mask, K = mask size.

    Pixels are ordered by relevance descending with ties broken by row-major
    position (the order of a stable descending sort of the flattened map): all
    pixels above the K-th largest value are taken, then the earliest (row-major)
    pixels equal to it until K are taken. An empty mask gives 0.0; a full mask 1.0;
    a map with NaN or +-Inf nan.
    """
    n, s = _check_pair(heatmaps, masks)
    out = np.zeros(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        r = b - a
        h = np.asarray(heatmaps[a:b]).reshape(r, -1)
        h = h.astype(_score_dtype(h.dtype), copy=False)
        m = np.asarray(masks[a:b], dtype=bool).reshape(r, -1)
        k = m.sum(axis=1)
        ok = k > 0
        finite = _finite(h)
        for i in np.flatnonzero(ok & finite):
            out[a + i] = _rank_of_row(h[i], m[i], int(k[i]))
        out[a:b][~finite] = np.nan
    return out


def _rank_of_row(h: np.ndarray, m: np.ndarray, k: int) -> float:
    """Hits among the top k of one flat row: all above the k-th largest value, then the
    earliest (row-major) pixels tied with it. O(pixels): a partition, not a sort."""
    kth = np.partition(h, len(h) - k)[len(h) - k]
    above = h > kth
    need = k - int(above.sum())
    hits = int((above & m).sum())
    tied = np.flatnonzero(h == kth)
    return (hits + int(m[tied[:need]].sum())) / k


# ------------------------------------------------------------------------- pixel AP


def _ap_of_row(ascending: np.ndarray, positives: np.ndarray) -> float:
    """sklearn's AP of one row from its sorted scores and its positives' scores.

    AP = sum over thresholds t of (R(t) - R(t_prev)) * P(t) gives each positive pixel
    the weight 1/npos times the precision at its own score: (positives scoring >= s)
    / (pixels scoring >= s). Tied pixels share that threshold, as in sklearn.
    """
    k = len(positives)
    if k == 0:
        return 0.0
    positives = np.sort(positives)
    at_least_all = len(ascending) - np.searchsorted(ascending, positives, side="left")
    at_least_pos = k - np.searchsorted(positives, positives, side="left")
    return float(np.mean(at_least_pos / at_least_all))


def sorted_rows(heatmaps) -> np.ndarray:
    """(n, S*S) each map's values ascending (float32 for float16/32 maps).

    :func:`pixel_average_precision` and :func:`heatmap_boxes` both need it; a caller
    that scores one block with both sorts once and passes it as ``ascending``.
    """
    h = np.asarray(heatmaps)
    h = h.reshape(h.shape[0], -1)
    return np.sort(h.astype(_score_dtype(h.dtype), copy=False), axis=1)


def pixel_average_precision(heatmaps, masks, ascending: np.ndarray | None = None) -> np.ndarray:
    """(n,) per row, the average precision of ranking pixels by relevance against the mask.

    Identical in definition (ties included) to
    ``sklearn.metrics.average_precision_score(mask.ravel(), heatmap.ravel())``: tied
    pixels enter the precision-recall curve together as one threshold. An empty mask
    gives 0.0, as sklearn does; a map with NaN or +-Inf nan. One sort of the map per
    row, then a binary search per mask pixel (see :func:`_ap_of_row`).
    """
    n, s = _check_pair(heatmaps, masks)
    out = np.zeros(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        r = b - a
        h = np.asarray(heatmaps[a:b]).reshape(r, -1)
        h = h.astype(_score_dtype(h.dtype), copy=False)
        m = np.asarray(masks[a:b], dtype=bool).reshape(r, -1)
        finite = _finite(h)
        srt = np.sort(h, axis=1) if ascending is None else ascending[a:b]
        for i in range(r):
            out[a + i] = _ap_of_row(srt[i], h[i][m[i]]) if finite[i] else np.nan
    return out


# -------------------------------------------------------------------------- box AP


BOX_RELEVANCE_SHARE = 0.5


def heatmap_boxes(
    heatmaps, share: float = BOX_RELEVANCE_SHARE, ascending: np.ndarray | None = None
) -> np.ndarray:
    """(n, 4) float64: one box per heatmap for box AP, in half-open pixel coordinates.

    Definition: rank the pixels by positive relevance R+ = max(R, 0); take the
    smallest top set that holds at least `share` (default half) of the map's total
    R+ (every pixel tied with the last one taken is taken too); the box is that
    set's bounding box. A map with no positive relevance gives the whole image
    ``(0, 0, S, S)``, one with NaN or +-Inf a box of nan. A single pixel (y, x)
    gives ``(x, y, x+1, y+1)``.

    Why not "pixels above a fraction of the maximum": LRP maps are spiky, so the
    maximum is often one pixel and such a box covers a speck, not the object.
    """
    n, s = heatmaps.shape[0], heatmaps.shape[1]
    out = np.zeros((n, 4), dtype=np.float64)
    out[:, 2:] = s
    for a, b in _blocks(n, s):
        r = b - a
        h = np.asarray(heatmaps[a:b])
        positive = np.maximum(h.astype(_score_dtype(h.dtype), copy=False), 0).reshape(r, -1)
        if ascending is None:
            ranked = np.sort(positive, axis=1)[:, ::-1]
        else:  # clipping at 0 keeps the order: the sorted map, clipped
            ranked = np.maximum(ascending[a:b, ::-1], 0)
        held = np.cumsum(ranked.astype(np.float64), axis=1)  # 3x faster than dtype=
        total = held[:, -1]
        has = total > 0
        last = np.argmax(held >= (share * total)[:, None], axis=1)
        threshold = ranked[np.arange(r), last]
        selected = (positive >= threshold[:, None]) & (positive > 0)
        selected = selected.reshape(r, s, s)
        ys = selected.any(axis=2)
        xs = selected.any(axis=1)
        box = np.stack(
            [
                np.argmax(xs, axis=1),
                np.argmax(ys, axis=1),
                s - np.argmax(xs[:, ::-1], axis=1),
                s - np.argmax(ys[:, ::-1], axis=1),
            ],
            axis=1,
        )
        out[a:b][has] = box[has]
        out[a:b][~_finite(h.reshape(r, -1))] = np.nan
    return out


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one half-open box with each of ``others``; area = (x1-x0)*(y1-y0)."""
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def voc_matches(
    det_boxes,
    det_scores,
    det_sample,
    gt_boxes,
    gt_sample,
    gt_difficult,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PASCAL VOC matching of one class's detections: ``(order, tp, counted)``.

    Detections are taken by score, highest first (``order``, stable for ties). Each is
    matched to the GT box of its sample with the highest IoU (first on ties), taken or
    not: IoU >= threshold on a difficult box -> ignored (``counted`` False); on a box
    not yet taken -> TP (box taken); otherwise -> FP. ``tp`` and ``counted`` are per
    detection in the input order. A detection whose box is nan is an FP.
    """
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_sample = np.asarray(det_sample).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_sample = np.asarray(gt_sample).reshape(-1)
    gt_difficult = np.asarray(gt_difficult, dtype=bool).reshape(-1)
    by_sample: dict = {}
    for j, smp in enumerate(gt_sample.tolist()):
        by_sample.setdefault(smp, []).append(j)
    by_sample = {k: np.array(v) for k, v in by_sample.items()}
    taken = np.zeros(len(gt_boxes), dtype=bool)
    tp = np.zeros(len(det_scores), dtype=bool)
    counted = np.ones(len(det_scores), dtype=bool)
    order = np.argsort(-det_scores, kind="stable")
    for d in order:
        cand = by_sample.get(det_sample[d].item())
        if cand is None:
            continue
        ious = _iou(det_boxes[d], gt_boxes[cand])
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold:
            j = cand[best]
            if gt_difficult[j]:
                counted[d] = False
            elif not taken[j]:
                taken[j] = True
                tp[d] = True
    return order, tp, counted


def voc_ap_from_matches(
    order: np.ndarray,
    tp: np.ndarray,
    counted: np.ndarray,
    npos: float,
    weights: np.ndarray | None = None,
) -> float:
    """All-point VOC AP from :func:`voc_matches`; ``weights`` repeat detections.

    AP is the area under the monotone precision envelope of the precision-recall
    curve; nan when ``npos`` is 0. A weight w counts a detection w times (a bootstrap
    resample that draws its image w times, together with that image's GT boxes in
    ``npos``): the envelope only looks at the curve's points after each run of
    true positives, so w copies in a row give the same AP as w separate detections.
    """
    if npos <= 0:
        return float("nan")
    w = np.ones(len(tp)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.where(counted, w, 0.0)[order]
    hit = tp[order]
    ctp = np.cumsum(np.where(hit, w, 0.0))
    cfp = np.cumsum(np.where(hit, 0.0, w))
    recall = ctp / npos
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def voc_average_precision(
    det_boxes,
    det_scores,
    det_sample,
    gt_boxes,
    gt_sample,
    gt_difficult,
    iou_threshold: float = 0.5,
) -> float:
    """PASCAL VOC (2010+, all points) average precision of one class's detections.

    Matching as :func:`voc_matches`, npos = number of non-difficult GT boxes, AP as
    :func:`voc_ap_from_matches`; nan when npos == 0.
    """
    order, tp, counted = voc_matches(
        det_boxes, det_scores, det_sample, gt_boxes, gt_sample, gt_difficult, iou_threshold
    )
    npos = int((~np.asarray(gt_difficult, dtype=bool).reshape(-1)).sum())
    return voc_ap_from_matches(order, tp, counted, npos)


def mean_over_classes(values: np.ndarray, classes: np.ndarray) -> float:
    """Mean per class, then the mean over the classes present; nan values are ignored.

    Returns nan when no value is left.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    if values.shape != classes.shape:
        raise ValueError(f"{values.shape[0]} values for {classes.shape[0]} classes")
    keep = ~np.isnan(values)
    if not keep.any():
        return float("nan")
    uniq, inv = np.unique(classes[keep], return_inverse=True)
    sums = np.bincount(inv, weights=values[keep], minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    return float(np.mean(sums / counts))
