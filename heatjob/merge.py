"""`heatjob merge`: stream a finished store shard by shard and score every composite.

Box metrics need the target's boxes: rows whose target class has no box in its
sample (e.g. a predicted class that is not present) are not scored. Two
baselines are scored beside the composites, on the same rows: a uniform random
heatmap and a centre-point heatmap, so a reader can tell what a number is worth.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from heatjob import metrics
from heatjob.errors import HeatjobError
from heatjob.store import StoreInfo, done_flags, open_store, store_units

METRIC_NAMES = (
    "pointing_game",
    "pointing_game_difficult",
    "relevance_mass",
    "relevance_mass_weighted",
    "relevance_rank",
    "pixel_ap",
    "box_ap50",
    "n_rows",
)
BASELINES = ("baseline:random", "baseline:centre")


@dataclass
class RowGeometry:
    """What the metrics need to know about every scored row."""

    rows: np.ndarray  # (n,) store row index of each scored row
    sample: np.ndarray  # (n,)
    target: np.ndarray  # (n,)
    boxes: list[np.ndarray]  # per row: the target class's boxes, heatmap px
    image_sizes: np.ndarray  # (n, 2) original height, width
    other_class: np.ndarray  # (n,) the sample has a class besides the target
    score: np.ndarray  # (n,) the target logit, to rank boxes for box AP
    ground_truth: dict[str, np.ndarray]  # every box of the store: xyxy, sample, class, difficult


@dataclass
class MergeReport:
    store: str
    metrics: dict[str, dict[str, float | None]]
    baselines: dict[str, dict[str, float | None]]
    notes: list[str] = field(default_factory=list)


def row_geometry(root: zarr.Group) -> RowGeometry:
    """Scored rows and their target boxes, from the store's small arrays."""
    rows_sample = root["rows/sample"][:]
    rows_target = root["rows/target"][:].astype(np.int64)
    labels = root["samples/labels"][:]
    logits = root["samples/logits"][:]
    sizes = root["samples/size"][:]
    box_sample = root["boxes/sample"][:]
    box_class = root["boxes/class"][:].astype(np.int64)
    xyxy = root["boxes/xyxy"][:]
    by_key: dict[tuple[int, int], list[int]] = {}
    for b, key in enumerate(zip(box_sample.tolist(), box_class.tolist(), strict=True)):
        by_key.setdefault(key, []).append(b)
    scored = [
        r
        for r, key in enumerate(zip(rows_sample.tolist(), rows_target.tolist(), strict=True))
        if key in by_key
    ]
    rows = np.asarray(scored, dtype=np.int64)
    sample, target = rows_sample[rows], rows_target[rows]
    n_labels = labels[sample].sum(axis=1)
    return RowGeometry(
        rows=rows,
        sample=sample,
        target=target,
        boxes=[xyxy[by_key[(int(s), int(t))]] for s, t in zip(sample, target, strict=True)],
        image_sizes=sizes[sample],
        other_class=(n_labels - labels[sample, target].astype(int)) > 0,
        score=logits[sample, target],
        ground_truth={
            "xyxy": xyxy,
            "sample": box_sample,
            "class": box_class,
            "difficult": root["boxes/difficult"][:],
        },
    )


def score_block(heatmaps: np.ndarray, geometry: RowGeometry, index: np.ndarray) -> dict:
    """Per-row metric values for the scored rows `index` (positions in geometry)."""
    boxes = [geometry.boxes[i] for i in index]
    size = heatmaps.shape[-1]
    masks = metrics.box_masks(boxes, size)
    return {
        "hit": metrics.pointing_game_hits(heatmaps, boxes, geometry.image_sizes[index]),
        "hard": metrics.hard_subset(masks, geometry.other_class[index]),
        "mass": metrics.relevance_mass(heatmaps, masks),
        "mass_weighted": metrics.relevance_mass_weighted(heatmaps, masks),
        "rank": metrics.relevance_rank(heatmaps, masks),
        "pixel_ap": metrics.pixel_average_precision(heatmaps, masks),
        "box": metrics.heatmap_boxes(heatmaps),
    }


def aggregate(per_row: dict, geometry: RowGeometry) -> dict[str, float | None]:
    """The contract's metrics from per-row values."""
    classes = geometry.target
    gt = geometry.ground_truth
    hard = per_row["hard"]
    box_ap = []
    for c in np.unique(classes):
        det = classes == c
        gt_c = gt["class"] == c
        box_ap.append(
            metrics.voc_average_precision(
                per_row["box"][det],
                geometry.score[det],
                geometry.sample[det],
                gt["xyxy"][gt_c],
                gt["sample"][gt_c],
                gt["difficult"][gt_c],
            )
        )
    box_ap = [v for v in box_ap if not np.isnan(v)]

    def value(x: float) -> float | None:
        return None if x is None or np.isnan(x) else round(float(x), 6)

    return {
        "pointing_game": value(metrics.mean_over_classes(per_row["hit"].astype(float), classes)),
        "pointing_game_difficult": value(
            metrics.mean_over_classes(per_row["hit"][hard].astype(float), classes[hard])
        ),
        "relevance_mass": value(np.mean(per_row["mass"])),
        "relevance_mass_weighted": value(np.mean(per_row["mass_weighted"])),
        "relevance_rank": value(np.mean(per_row["rank"])),
        "pixel_ap": value(metrics.mean_over_classes(per_row["pixel_ap"], classes)),
        "box_ap50": value(np.mean(box_ap) if box_ap else np.nan),
        "n_rows": int(len(classes)),
    }


def _blocks(root: zarr.Group, info: StoreInfo, geometry: RowGeometry) -> Iterator:
    """(unit rows slice, positions in geometry) per unit that has scored rows."""
    for unit in store_units(root, info):
        lo, hi = np.searchsorted(geometry.rows, [unit.row_start, unit.row_stop])
        if hi > lo:
            yield unit, np.arange(lo, hi)


def random_heatmaps(rows: np.ndarray, size: int) -> np.ndarray:
    """Uniform noise, seeded by row index so the baseline does not depend on blocking."""
    return np.stack(
        [np.random.default_rng([7, int(r)]).random((size, size), dtype=np.float32) for r in rows]
    )


def centre_heatmaps(rows: np.ndarray, size: int) -> np.ndarray:
    """Highest at the image centre, falling off linearly with distance."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    distance = np.hypot(yy - size / 2, xx - size / 2)
    centre = (1.0 - distance / distance.max()).astype(np.float32)
    return np.broadcast_to(centre, (len(rows), size, size))


def merge(path: str, json_path: str | None = None, progress: bool = True) -> MergeReport:
    """Score every composite of a finished store; write results to its attributes."""
    root, info = open_store(path, mode="r+")
    done = done_flags(root)
    if not done.all():
        raise HeatjobError(
            f"store {path} is not finished: {int(done.sum())} of {len(done)} units done; "
            "run `heatjob submit` again to finish it"
        )
    notes: list[str] = []
    if not info.has_boxes:
        notes.append("box metrics skipped: the data set has no boxes")
        empty = {name: None for name in METRIC_NAMES} | {"n_rows": 0}
        results = {c: dict(empty) for c in info.composites}
        baselines = {b: dict(empty) for b in BASELINES}
    else:
        geometry = row_geometry(root)
        n_rows = root["rows/sample"].shape[0]
        if len(geometry.rows) < n_rows:
            notes.append(
                f"{n_rows - len(geometry.rows)} of {n_rows} rows not scored: "
                "their target class has no box in the sample"
            )
        size = info.image_size
        arrays = {c: root[f"heatmaps/{c}"] for c in info.composites}
        per_row: dict[str, dict[str, list]] = {name: {} for name in [*arrays, *BASELINES]}
        blocks = list(_blocks(root, info, geometry))
        for unit, index in tqdm(
            blocks, desc="merge", unit="shard", disable=not progress, file=sys.stderr, leave=False
        ):
            local = geometry.rows[index] - unit.row_start
            maps = {c: a[unit.row_start : unit.row_stop][local] for c, a in arrays.items()}
            maps["baseline:random"] = random_heatmaps(geometry.rows[index], size)
            maps["baseline:centre"] = centre_heatmaps(geometry.rows[index], size)
            for name, heatmaps in maps.items():
                values = score_block(np.asarray(heatmaps, dtype=np.float32), geometry, index)
                for key, v in values.items():
                    per_row[name].setdefault(key, []).append(v)
        scored = {
            name: aggregate({k: np.concatenate(v) for k, v in values.items()}, geometry)
            for name, values in per_row.items()
        }
        results = {c: scored[c] for c in info.composites}
        baselines = {b: scored[b] for b in BASELINES}

    root.attrs["metrics"] = results
    root.attrs["baselines"] = baselines
    root.attrs["merged"] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notes": notes,
    }
    with warnings.catch_warnings():  # zarr notes that consolidation is not in the v3 spec yet
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(root.store)  # the open store: a URL keeps its options
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    return MergeReport(path, results, baselines, notes)


def format_table(report: MergeReport) -> str:
    """The metrics as an aligned text table, baselines under the composites."""
    columns = [
        ("pointing_game", "PG"),
        ("pointing_game_difficult", "PG-hard"),
        ("relevance_mass", "mu"),
        ("relevance_mass_weighted", "mu_w"),
        ("relevance_rank", "rank"),
        ("pixel_ap", "pixAP"),
        ("box_ap50", "boxAP50"),
        ("n_rows", "rows"),
    ]
    names = [*report.metrics, *report.baselines]
    width = max(len(n) for n in [*names, "composite"])
    lines = ["composite".ljust(width) + "".join(f"{label:>9}" for _, label in columns)]
    lines.append("-" * len(lines[0]))

    def cell(value: float | int | None) -> str:
        if value is None:
            return f"{'-':>9}"
        return f"{value:>9d}" if isinstance(value, int) else f"{value:>9.3f}"

    for group in (report.metrics, report.baselines):
        for name, values in group.items():
            lines.append(name.ljust(width) + "".join(cell(values.get(k)) for k, _ in columns))
        if group is report.metrics:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
