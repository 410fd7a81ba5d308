"""Region perturbation (Samek et al. 2017): the settings, the patch orders and AOPC.

Pure numpy. A heatmap row's patches (a regular grid of patch x patch pixels) are ranked
by the sum of the heatmap over each patch; the input is then perturbed patch by patch in
that order and the target logit recorded after each step (heatjob.eval.perturbation runs
the model). This module holds what needs no model: which settings are valid, the order of
the patches, and the area over the perturbation curve with its bootstrap interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from heatjob.errors import SpecError

ORDERS = ("morf", "lerf", "random")  # most relevant first, least relevant first, seeded random
BASELINES = ("mean", "zero", "blur", "noise")
DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "patch": 8,
    "order": list(ORDERS),
    "baseline": "mean",
    "seed": 0,
}


def resolve_settings(table: Any, image_size: int, where: str) -> dict[str, Any]:
    """`[evaluation] faithfulness` checked, with its defaults filled in; {} stays off.

    `where` names the key in errors (SpecError, one line)."""
    if not table:
        return {}
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table, got {table!r}")
    unknown = [k for k in table if k not in DEFAULTS]
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **table}
    for key in ("steps", "patch", "seed"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} {key} must be an integer, got {value!r}")
    patch, steps = out["patch"], out["steps"]
    if not 1 <= patch <= image_size or image_size % patch:
        raise SpecError(
            f"{where} patch must divide [dataset] image_size = {image_size}, got {patch}"
        )
    n_patches = (image_size // patch) ** 2
    if not 1 <= steps <= n_patches:
        raise SpecError(
            f"{where} steps must be 1 to {n_patches} (the patches of {patch} px in an image "
            f"of {image_size} px), got {steps}"
        )
    if out["seed"] < 0:
        raise SpecError(f"{where} seed must be 0 or positive, got {out['seed']}")
    orders = out["order"]
    if isinstance(orders, str):
        orders = [orders]
    if not isinstance(orders, list) or not orders or not all(o in ORDERS for o in orders):
        raise SpecError(f"{where} order must be a list of {', '.join(ORDERS)}, got {orders!r}")
    if len(set(orders)) != len(orders):
        raise SpecError(f"{where} order lists an order twice: {orders!r}")
    if out["baseline"] not in BASELINES:
        raise SpecError(
            f"{where} baseline must be one of {', '.join(BASELINES)}, got {out['baseline']!r}"
        )
    out["order"] = list(orders)
    return out


def patch_sums(heatmaps: np.ndarray, patch: int) -> np.ndarray:
    """(n, G) float64 sums of each patch, patches in row-major order of the grid."""
    n, size, _ = heatmaps.shape
    g = size // patch
    blocks = heatmaps.astype(np.float64).reshape(n, g, patch, g, patch)
    return blocks.sum(axis=(2, 4)).reshape(n, g * g)


def patch_orders(
    heatmaps: np.ndarray, patch: int, order: str, rows: np.ndarray, seed: int
) -> np.ndarray:
    """(n, G) patch indices in perturbation order.

    morf: largest patch sum first; lerf: smallest first; ties in patch index order (a
    stable sort), so an order never depends on the sort's implementation. random: a
    permutation seeded by (seed, store row), the same whatever the heatmap and however
    rows are grouped into units.
    """
    n, size, _ = heatmaps.shape
    g2 = (size // patch) ** 2
    if order == "random":
        return np.stack(
            [np.random.default_rng([seed, int(r)]).permutation(g2) for r in rows]
        ).reshape(n, g2)
    sums = patch_sums(heatmaps, patch)
    if order == "morf":
        return np.argsort(-sums, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(sums, axis=1, kind="stable")
    raise ValueError(f"unknown order {order!r}")


def aopc(curves: np.ndarray) -> np.ndarray:
    """Per row, AOPC = 1/(K+1) Σ_{k=0..K} (f(x_0) − f(x_k)), in logit units (not divided
    by f(x_0)): curves (n, K+1) -> (n,). NaN where a curve holds NaN."""
    return np.mean(curves[:, :1] - curves, axis=1)


def aopc_table(
    per_row: dict[str, np.ndarray],
    rows_sample: np.ndarray,
    n_samples: int,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[dict[str, float | None], dict[str, list[float] | None]]:
    """Mean AOPC per source (name -> (M,) per-row values, NaN = not counted) and its
    percentile bootstrap interval, images resampled with replacement (an image's rows
    stay together); the same draws for every source, so sources are compared paired."""
    values, intervals = {}, {}
    valid = {name: np.isfinite(v) for name, v in per_row.items()}
    for name, v in per_row.items():
        ok = valid[name]
        values[name] = round(float(v[ok].mean()), 6) if ok.any() else None
    with_rows = np.zeros(n_samples, dtype=bool)
    for ok in valid.values():
        with_rows[rows_sample[ok]] = True
    pool = np.flatnonzero(with_rows)
    if resamples <= 0 or len(pool) == 0:
        return values, {}
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, n_samples))
    weights[:, pool] = rng.multinomial(len(pool), np.full(len(pool), 1.0 / len(pool)), resamples)
    tail = (1 - level) / 2 * 100
    for name, v in per_row.items():
        ok = valid[name]
        w = weights[:, rows_sample[ok]]  # (R, rows counted)
        total = w.sum(axis=1)
        means = (w @ v[ok]) / np.where(total > 0, total, np.nan)
        means = means[np.isfinite(means)]
        intervals[name] = (
            [round(float(q), 6) for q in np.percentile(means, [tail, 100 - tail])]
            if len(means)
            else None
        )
    return values, intervals
