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

from typing import NamedTuple

import numpy as np

__all__ = [
    "box_masks",
    "finite_rows",
    "hard_subset",
    "heatmap_boxes",
    "mean_over_classes",
    "pixel_average_precision",
    "pointing_game_hits",
    "rank_rows",
    "Ranked",
    "relevance_mass",
    "relevance_masses",
    "relevance_mass_weighted",
    "relevance_rank",
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


# ---------------------------------------------------------------------- order keys
# The pointing game, relevance rank, pixel AP and the heatmap box only compare values.
# A float16 map (the store's default) has 65,536 possible values, so each pixel gets a
# uint16 key that orders and ties exactly like its value: sorting 2-byte keys is
# several times faster than sorting float32, and everything after the sort (binary
# searches, the top-k threshold, the box's cut) works on the keys. Other dtypes keep
# their values as keys, so both paths run the same code and give the same numbers.


def _float16_keys(h: np.ndarray) -> np.ndarray:
    """uint16 keys of float16 values: same order, equal exactly when the values are."""
    bits = np.ascontiguousarray(h, dtype=np.float16).view(np.uint16)
    # negative (sign bit set): flip every bit, so more negative is smaller; else set it
    keys = bits ^ ((bits.view(np.int16) >> 15).view(np.uint16) | np.uint16(0x8000))
    keys[keys == 0x7FFF] = 0x8000  # -0.0 ties with +0.0
    return keys


_ZERO_KEY = 0x8000
_FINITE_KEYS = (0x0400, 0xFBFF)  # keys of -65504 and +65504; NaN and +-Inf lie outside


class Ranked(NamedTuple):
    """A block of maps as the order-based metrics see it (see :func:`rank_rows`)."""

    keys: np.ndarray  # (n, P) compare and tie exactly like the values
    ascending: np.ndarray  # (n, P) each row's keys sorted
    finite: np.ndarray  # (n,) no NaN, no +-Inf


def rank_rows(heatmaps) -> Ranked:
    """One sort per row, shared by :func:`pointing_game_hits`, :func:`relevance_rank`,
    :func:`pixel_average_precision` and :func:`heatmap_boxes` (their ``ranked=``).

    float16 maps get uint16 order keys; float32 and float64 maps keep their values
    (float16 and float32 copies of the same maps score identically).
    """
    h = np.asarray(heatmaps)
    h = h.reshape(h.shape[0], -1)
    if h.dtype == np.float16:
        keys = _float16_keys(h)
        ascending = np.sort(keys, axis=1)
        lo, hi = _FINITE_KEYS
        finite = (ascending[:, 0] >= lo) & (ascending[:, -1] <= hi)
    else:
        keys = h.astype(_score_dtype(h.dtype), copy=False)
        ascending = np.sort(keys, axis=1)
        finite = _finite(keys)
    return Ranked(keys, ascending, finite)


def _positive_values(keys: np.ndarray) -> np.ndarray:
    """R+ = max(value, 0) as float64 of uint16 keys: the float16 bits of the positive
    keys (NaN and +Inf stay so), 0 for the rest."""
    bits = np.maximum(keys, np.uint16(_ZERO_KEY)) ^ np.uint16(_ZERO_KEY)
    return bits.view(np.float16).astype(np.float64)


def _positive_count(rk: Ranked) -> int:
    """The most pixels with a value > 0 in any row (uint16 keys)."""
    zero = np.full(len(rk.ascending), _ZERO_KEY, dtype=np.uint16)
    return int((rk.ascending.shape[1] - _search_rows(rk.ascending, zero, "right")).max())


def _search_rows(ascending: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted of each row's value in that row (sorted)."""
    found = [np.searchsorted(r, v, side) for r, v in zip(ascending, values, strict=True)]
    return np.array(found, dtype=np.int64)


def _ranked_block(heatmaps, ranked: Ranked | None, a: int, b: int) -> Ranked:
    if ranked is None:
        return rank_rows(np.asarray(heatmaps[a:b]))
    return Ranked(ranked.keys[a:b], ranked.ascending[a:b], ranked.finite[a:b])


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
        box = ym[:, :, None] & xm[:, None, :]
        if len(rows) == n:  # every row has a k-th box: no gather and scatter
            out |= box
        else:
            out[rows] |= box
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


def pointing_game_hits(
    heatmaps, boxes, image_sizes, tolerance: float = 15.0, ranked: Ranked | None = None
) -> np.ndarray:
    """(n,) bool: does each heatmap's maximum point at a target box?

    The maximum pixel is the first maximum in row-major order (``np.argmax`` of the
    flattened map). A constant map (all zero, say) and a map with NaN or +-Inf do not
    point anywhere: a miss. The maximum's centre is
    mapped to original-image coordinates ``((x+0.5)*W/S, (y+0.5)*H/S)``, the boxes to
    ``(x*W/S, y*H/S)``; a hit is a Euclidean distance <= ``tolerance`` original pixels
    from the nearest box, taken as a filled rectangle (distance 0 inside).
    ``ranked``: :func:`rank_rows` of the same maps when the caller has it.
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
        rk = _ranked_block(heatmaps, ranked, a, b)
        arg[a:b] = np.argmax(rk.keys, axis=1)
        points[a:b] = rk.finite & (rk.ascending[:, -1] > rk.ascending[:, 0])
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
    return relevance_masses(heatmaps, [masks])[0]


def relevance_masses(heatmaps, masks_list: list) -> np.ndarray:
    """(len(masks_list), n): :func:`relevance_mass` of the same maps in several masks
    (a target's boxes, the other classes' boxes), R+ and its total computed once.

    float16 maps whose R+ totals stay below 2**28 sum exactly in any order (see
    :func:`_cut`), so their masked sums skip the temporary; other maps sum R+ as
    float32 values in float64 over the masked copy. Same values either way.
    """
    n, s = heatmaps.shape[0], heatmaps.shape[1]
    out = np.zeros((len(masks_list), n), dtype=np.float64)
    for masks in masks_list:
        _check_pair(heatmaps, masks)
    for a, b in _blocks(n, s):
        h = np.asarray(heatmaps[a:b]).reshape(b - a, -1)
        exact = h.dtype == np.float16
        if exact:
            pos = h.astype(np.float64)
            finite = _finite(pos)
            pos = np.maximum(pos, 0.0, out=pos)
            total = pos.sum(axis=1)
            exact = bool((total[finite] < 2.0**28).all())
        if not exact:
            h = h.astype(_score_dtype(h.dtype), copy=False)
            pos = np.maximum(h, 0)
            total = pos.sum(axis=1, dtype=np.float64)
            finite = _finite(h)
        ok = (total > 0) & finite
        for j, masks in enumerate(masks_list):
            m = np.asarray(masks[a:b], dtype=bool).reshape(b - a, -1)
            if exact:
                inside = np.sum(pos, axis=1, where=m)
            else:
                inside = np.where(m, pos, 0).sum(axis=1, dtype=np.float64)
            out[j, a:b][ok] = inside[ok] / total[ok]
            out[j, a:b][~finite] = np.nan
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


def relevance_rank(heatmaps, masks, ranked: Ranked | None = None) -> np.ndarray:
    """(n,) share of the K highest-relevance pixels that lie in the mask, K = mask size.

    Pixels are ordered by relevance descending with ties broken by row-major
    position (the order of a stable descending sort of the flattened map): all
    pixels above the K-th largest value are taken, then the earliest (row-major)
    pixels equal to it until K are taken. An empty mask gives 0.0; a full mask 1.0;
    a map with NaN or +-Inf nan. ``ranked``: :func:`rank_rows` of the same maps.
    """
    n, s = _check_pair(heatmaps, masks)
    out = np.zeros(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        rk = _ranked_block(heatmaps, ranked, a, b)
        m = np.asarray(masks[a:b], dtype=bool).reshape(b - a, -1)
        k = m.sum(axis=1)
        pixels = m.shape[1]
        kth = rk.ascending[np.arange(b - a), np.minimum(pixels - k, pixels - 1)]
        # the sorted row says how many pixels lie above the K-th value and how many tie
        above = pixels - _search_rows(rk.ascending, kth, "right")
        tied = pixels - _search_rows(rk.ascending, kth, "left") - above
        need = k - above  # pixels tied with the K-th value still to take
        hits = ((rk.keys >= kth[:, None]) & m).sum(axis=1)  # all of them taken
        for i in np.flatnonzero((tied > need) & (k > 0)):  # give back the later tied ones
            hits[i] -= m[i][np.flatnonzero(rk.keys[i] == kth[i])[need[i] :]].sum()
        ok = k > 0
        out[a:b][ok] = hits[ok] / k[ok]
        out[a:b][~rk.finite] = np.nan
    return out


# ------------------------------------------------------------------------- pixel AP


def _ap_of_row(ascending: np.ndarray, positives: np.ndarray) -> float:
    """sklearn's AP of one row from its sorted scores and its positives' scores.

    AP = sum over thresholds t of (R(t) - R(t_prev)) * P(t) gives each positive pixel
    the weight 1/npos times the precision at its own score: (positives scoring >= s)
    / (pixels scoring >= s). Tied pixels share that threshold, as in sklearn, so the
    binary search runs once per distinct positive score.
    """
    k = len(positives)
    if k == 0:
        return 0.0
    positives = np.sort(positives)
    first = np.flatnonzero(np.concatenate([[True], positives[1:] != positives[:-1]]))
    at_least_all = len(ascending) - np.searchsorted(ascending, positives[first], side="left")
    precision = (k - first) / at_least_all  # at each distinct positive score
    return float(np.mean(np.repeat(precision, np.diff(first, append=k))))


def pixel_average_precision(heatmaps, masks, ranked: Ranked | None = None) -> np.ndarray:
    """(n,) per row, the average precision of ranking pixels by relevance against the mask.

    Identical in definition (ties included) to
    ``sklearn.metrics.average_precision_score(mask.ravel(), heatmap.ravel())``: tied
    pixels enter the precision-recall curve together as one threshold. An empty mask
    gives 0.0, as sklearn does; a map with NaN or +-Inf nan. One sort of the map per
    row (``ranked``: :func:`rank_rows` of the same maps), then a binary search per
    distinct score in the mask (see :func:`_ap_of_row`).
    """
    n, s = _check_pair(heatmaps, masks)
    out = np.zeros(n, dtype=np.float64)
    for a, b in _blocks(n, s):
        rk = _ranked_block(heatmaps, ranked, a, b)
        m = np.asarray(masks[a:b], dtype=bool).reshape(b - a, -1)
        for i in range(b - a):
            ap = _ap_of_row(rk.ascending[i], rk.keys[i][m[i]])
            out[a + i] = ap if rk.finite[i] else np.nan
    return out


# -------------------------------------------------------------------------- box AP


BOX_RELEVANCE_SHARE = 0.5


def heatmap_boxes(
    heatmaps, share: float = BOX_RELEVANCE_SHARE, ranked: Ranked | None = None
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
    ``ranked``: :func:`rank_rows` of the same maps when the caller has it.
    """
    n, s = heatmaps.shape[0], heatmaps.shape[1]
    out = np.zeros((n, 4), dtype=np.float64)
    out[:, 2:] = s
    for a, b in _blocks(n, s):
        r = b - a
        rk = _ranked_block(heatmaps, ranked, a, b)
        descending = rk.ascending[:, ::-1]
        if descending.dtype == np.uint16:  # R+ is 0 past the positive keys: leave them
            head = max(1, _positive_count(rk))
            ranked_positive = _positive_values(descending[:, :head])
        else:
            ranked_positive = np.maximum(descending, 0).astype(np.float64)
        total, last = _cut(ranked_positive, share, exact_sums=descending.dtype == np.uint16)
        has = total > 0
        # the last pixel taken has R+ > 0 where `has`, so ">= its key" keeps R+ > 0 only
        selected = rk.keys >= descending[np.arange(r), last][:, None]
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
        out[a:b][~rk.finite] = np.nan
    return out


def _cut(ranked: np.ndarray, share: float, exact_sums: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of R+ sorted descending: its total (summed left to right) and the first
    j where the running sum reaches ``share`` of the total.

    With ``exact_sums`` (float16 values, all multiples of 2**-24) and a total below
    2**28, every partial sum is exact in float64, so any summation order gives the
    left-to-right numbers: such rows find the cut from sums of 64-pixel chunks, then
    a running sum inside the one chunk where it lies. Other rows (float32 maps, huge
    totals) take the running sum of the whole row.
    """
    r, p = ranked.shape
    total = np.zeros(r)
    last = np.zeros(r, dtype=np.int64)
    quick = np.zeros(r, dtype=bool)
    if exact_sums and p:
        chunk = 64
        held = np.cumsum(np.add.reduceat(ranked, np.arange(0, p, chunk), axis=1), axis=1)
        total = held[:, -1].copy()
        quick = total < 2.0**28
        target = share * total
        j = np.argmax(held >= target[:, None], axis=1)  # the chunk holding the cut
        before = np.where(j > 0, held[np.arange(r), np.maximum(j - 1, 0)], 0.0)
        cols = j[:, None] * chunk + np.arange(chunk)
        inside = np.where(cols < p, np.take_along_axis(ranked, np.minimum(cols, p - 1), 1), 0)
        running = before[:, None] + np.cumsum(inside, axis=1)
        last = j * chunk + np.argmax(running >= target[:, None], axis=1)
    for i in np.flatnonzero(~quick):
        running = np.cumsum(ranked[i])
        total[i] = running[-1]
        last[i] = np.argmax(running >= share * running[-1])
    return total, last


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
