"""From per-row metric values to what a study reports (pure numpy, no store).

Every aggregate is computed from per-class sums weighted by a per-sample weight:
weight 1 for every sample gives the plain numbers, a bootstrap resample gives each
sample the number of times it was drawn. Resampling images rather than rows keeps
the rows of one image (its several targets, its boxes) together, as they are not
independent.

Row means: ``relevance_mass``, ``relevance_mass_weighted``, ``relevance_rank``,
``other_class_mass``, ``class_discriminativity``. Means over classes of per-class
means: ``pointing_game``, ``pointing_game_difficult``, ``pixel_ap``; ``box_ap50`` is
the mean over classes of each class's VOC AP. A nan per-row value (a row that is
not scored, or a map with NaN/Inf) takes no part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heatjob.eval import metrics
from heatjob.store import schema

ROW_MEANS = (
    "relevance_mass",
    "relevance_mass_weighted",
    "relevance_rank",
    "other_class_mass",
    "class_discriminativity",
)
CLASS_MEANS = ("pointing_game", "pointing_game_difficult", "pixel_ap")
AGGREGATES = tuple(name for name in schema.METRIC_NAMES if name != "n_rows")
SIZE_BINS = (("small", 0.0, 1 / 16), ("medium", 1 / 16, 1 / 4), ("large", 1 / 4, 1.01))


@dataclass
class Design:
    """Who the scored rows are, and the ground truth box AP counts against."""

    sample: np.ndarray  # (n,) sample of each scored row
    target: np.ndarray  # (n,) target class of each scored row
    n_samples: int
    n_classes: int
    gt_sample: np.ndarray  # (B,) every non-excluded box
    gt_class: np.ndarray
    gt_counts: np.ndarray  # (B,) bool: not difficult (counts in npos)
    pool: np.ndarray  # samples a bootstrap draws from


@dataclass
class Scored:
    """One heatmap source (a composite or a baseline) over the scored rows."""

    values: dict[str, np.ndarray]  # per-row values, nan where not scored
    matches: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    # class -> (rows of that class, voc order, tp, counted) for box AP
    _by_class: tuple | None = None  # cache of _by_class


def box_matches(design: Design, boxes: np.ndarray, scores: np.ndarray, gt_xyxy, gt_difficult):
    """VOC matching per class of one heatmap box per row (rows with a nan box left out)."""
    out = {}
    finite = np.isfinite(boxes).all(axis=1)
    for c in np.unique(design.target):
        rows = np.flatnonzero((design.target == c) & finite)
        gt = design.gt_class == c
        order, tp, counted = metrics.voc_matches(
            boxes[rows],
            scores[rows],
            design.sample[rows],
            gt_xyxy[gt],
            design.gt_sample[gt],
            gt_difficult[gt],
        )
        out[int(c)] = (rows, order, tp, counted)
    return out


def _by_class(scored: Scored, design: Design):
    """Rows grouped by class once per source: (order, starts, classes, values, valid).

    values holds every per-row metric as a column (nan -> 0), valid says which are
    not nan; a resample then needs only two weighted sums per class group.
    """
    if scored._by_class is None:
        order = np.argsort(design.target, kind="stable")
        classes, starts = np.unique(design.target[order], return_index=True)
        stacked = np.stack([scored.values[n][order] for n in (*CLASS_MEANS, *ROW_MEANS)], 1)
        valid = ~np.isnan(stacked)
        scored._by_class = (order, starts, classes, np.where(valid, stacked, 0.0), valid)
    return scored._by_class


def per_class(scored: Scored, design: Design, sample_weight: np.ndarray, rows=None) -> dict:
    """{metric: (C,) per-class value}, plus ``n_rows`` per class; ``rows`` masks rows."""
    w = sample_weight[design.sample].astype(np.float64)
    if rows is not None:
        w = np.where(rows, w, 0.0)
    c = design.n_classes
    out: dict[str, np.ndarray] = {}
    order, starts, classes, values, valid = _by_class(scored, design)
    sums = np.zeros((c, values.shape[1]))
    counts = np.zeros((c, values.shape[1]))
    if len(order):
        ws = w[order][:, None]
        sums[classes] = np.add.reduceat(values * ws, starts, axis=0)
        counts[classes] = np.add.reduceat(valid * ws, starts, axis=0)
    for j, name in enumerate((*CLASS_MEANS, *ROW_MEANS)):
        out[name] = np.divide(
            sums[:, j], counts[:, j], out=np.full(c, np.nan), where=counts[:, j] > 0
        )
        out[f"{name}:sum"], out[f"{name}:count"] = sums[:, j], counts[:, j]
    ap = np.full(c, np.nan)
    gt_w = np.where(design.gt_counts, sample_weight[design.gt_sample], 0.0)
    npos = np.bincount(design.gt_class, weights=gt_w, minlength=c)
    for k, (idx, order, tp, counted) in scored.matches.items():
        if rows is None or rows[idx].any():
            ap[k] = metrics.voc_ap_from_matches(order, tp, counted, npos[k], weights=w[idx])
    out["box_ap50"] = ap
    out["n_rows"] = out["relevance_mass:count"]
    return out


def summarise(table: dict, with_box_ap: bool = True) -> dict[str, float]:
    """One value per metric from a :func:`per_class` table (nan where nothing is left)."""
    out = {}
    for name in ROW_MEANS:
        total = table[f"{name}:count"].sum()
        out[name] = table[f"{name}:sum"].sum() / total if total > 0 else np.nan
    for name in CLASS_MEANS:
        present = table[f"{name}:count"] > 0
        out[name] = float(np.mean(table[name][present])) if present.any() else np.nan
    ap = table["box_ap50"][~np.isnan(table["box_ap50"])]
    out["box_ap50"] = float(np.mean(ap)) if with_box_ap and len(ap) else np.nan
    return out


def size_bins(box_share: np.ndarray) -> dict[str, np.ndarray]:
    """Rows by the share of the image their target's mask covers (small < 1/16 <= medium < 1/4)."""
    return {name: (box_share >= lo) & (box_share < hi) for name, lo, hi in SIZE_BINS}


def bootstrap(
    sources: dict[str, Scored], design: Design, resamples: int, seed: int, level: float = 0.95
) -> dict[str, dict[str, list[float] | None]]:
    """Percentile intervals of every aggregate, resampling images with replacement.

    The same resamples serve every source, so intervals of two composites come from
    paired draws. Deterministic for a given seed.
    """
    if resamples <= 0 or len(design.pool) == 0:
        return {}
    rng = np.random.default_rng(seed)
    n = len(design.pool)
    draws: dict[str, list[dict]] = {name: [] for name in sources}
    for _ in range(resamples):
        weight = np.zeros(design.n_samples)
        weight[design.pool] = rng.multinomial(n, np.full(n, 1.0 / n))
        for name, scored in sources.items():
            draws[name].append(summarise(per_class(scored, design, weight)))
    tail = (1 - level) / 2 * 100
    out = {}
    for name, values in draws.items():
        out[name] = {}
        for metric in AGGREGATES:
            column = np.array([v[metric] for v in values], dtype=np.float64)
            column = column[~np.isnan(column)]
            out[name][metric] = (
                [round(float(q), 6) for q in np.percentile(column, [tail, 100 - tail])]
                if len(column)
                else None
            )
    return out
