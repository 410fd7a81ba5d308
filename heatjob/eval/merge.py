"""`heatjob merge`: stream a finished store shard by shard and score every composite.

Box metrics need the target's boxes: rows whose target class has no box in its
sample (e.g. a predicted class that is not present), rows of samples marked in
`samples/failed`, and maps holding NaN or Inf are not scored. Two baselines are
scored beside the composites, on the same rows: a uniform random heatmap and a
centre-point heatmap, so a reader can tell what a number is worth.

Memory: one shard of each composite at a time; what is kept per row is a few
numbers (the per-row values), which go back into the store as
`metrics/<composite>/<metric>` arrays. Aggregates, per-class and size tables and
bootstrap intervals are computed from them (heatjob.eval.aggregate).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from heatjob.errors import HeatjobError
from heatjob.eval import aggregate, metrics
from heatjob.eval.faithfulness_merge import score_curves
from heatjob.store import schema
from heatjob.store.layout import StoreInfo, consolidate, open_store, write_row_array
from heatjob.store.records import by_sample_block, done_units, logit_reader, sample_failures
from heatjob.store.units import store_units

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass
class RowGeometry:
    """What the metrics need to know about every scored row."""

    rows: np.ndarray  # (n,) store row index of each scored row
    sample: np.ndarray  # (n,)
    target: np.ndarray  # (n,)
    boxes: Sequence[np.ndarray]  # per row: the target class's boxes, heatmap px
    other_boxes: Sequence[np.ndarray]  # per row: the boxes of the sample's other classes
    image_sizes: np.ndarray  # (n, 2) original height, width
    other_class: np.ndarray  # (n,) the sample has a class besides the target
    score: np.ndarray  # (n,) the target logit, to rank boxes for box AP
    ground_truth: dict[str, np.ndarray]  # boxes of the samples not excluded
    n_samples: int
    n_classes: int
    failed_samples: int = 0  # samples marked failed in samples/failed
    failed_rows: int = 0  # their rows, left out
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class MergeReport:
    store: str
    metrics: dict[str, dict[str, float | None]]
    baselines: dict[str, dict[str, float | None]]
    notes: list[str] = field(default_factory=list)
    intervals: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    per_class: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    by_size: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    excluded_failed: int = 0
    faithfulness: dict = field(default_factory=dict)  # the curves' settings, when scored


def failed_samples(root, n_samples: int) -> np.ndarray:
    """(N,) bool: the samples whose input could not be read (samples/failed, or in a
    format 2 store the units' records)."""
    if schema.SAMPLE_FAILED not in root:
        return np.zeros(n_samples, dtype=bool)
    return sample_failures(root)


@dataclass(frozen=True)
class RowBoxes(Sequence):
    """Per row, the boxes of its sample that are of its target class (`same`) or of the
    other classes, in the store's box order: a view into the boxes sorted by sample, two
    offsets a row rather than an array each."""

    xyxy: np.ndarray  # (B, 4) the boxes, sorted by sample (stable)
    klass: np.ndarray  # (B,) their classes
    lo: np.ndarray  # (n,) the row's sample's boxes are xyxy[lo:hi]
    hi: np.ndarray
    target: np.ndarray  # (n,)
    same: bool

    @classmethod
    def of(cls, sample, target, box_sample, box_class, xyxy) -> tuple[RowBoxes, RowBoxes]:
        """The target-class boxes and the other classes' boxes of rows (sample, target)."""
        order = np.argsort(box_sample, kind="stable")
        by_sample = box_sample[order]
        lo = np.searchsorted(by_sample, sample, side="left")
        hi = np.searchsorted(by_sample, sample, side="right")
        view = (xyxy[order], box_class[order], lo, hi, np.asarray(target))
        return cls(*view, same=True), cls(*view, same=False)

    def __len__(self) -> int:
        return len(self.lo)

    def __getitem__(self, i):
        a, b = self.lo[i], self.hi[i]
        return self.xyxy[a:b][(self.klass[a:b] == self.target[i]) == self.same]


def scored_rows(rows_sample, rows_target, box_sample, box_class) -> np.ndarray:
    """The rows whose target class has a box in their sample (a target still to be chosen,
    -1, has none)."""
    width = 1 + max(int(box_class.max(initial=0)), int(rows_target.max(initial=0)))
    chosen = rows_target >= 0
    keys = rows_sample * width + np.where(chosen, rows_target, 0)
    return np.flatnonzero(chosen & np.isin(keys, box_sample * width + box_class))


def _other_class(root, sample: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(rows,) bool: the row's sample has a label besides its target, samples/labels read
    a block of samples at a time."""
    array = root[schema.SAMPLE_LABELS]
    out = np.zeros(len(sample), dtype=bool)
    for at, labels, a in by_sample_block(lambda a, b: array[a:b], array.shape[0], sample):
        of_rows = labels[sample[at] - a]
        out[at] = of_rows.sum(axis=1) - of_rows[np.arange(len(at)), target[at]] > 0
    return out


def _scores(root, sample: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(rows,) float32: the target logit of each row, a block of samples at a time."""
    out = np.full(len(sample), np.nan, dtype=np.float32)
    n_samples = root[schema.SAMPLE_ID].shape[0]
    for at, logits, a in by_sample_block(logit_reader(root), n_samples, sample):
        out[at] = logits[sample[at] - a, target[at]]
    return out


def row_geometry(root) -> RowGeometry:
    """Scored rows and their target boxes, from the store's small arrays.

    A row is scored when its target class has a box in its sample and the sample is
    not marked failed; a failed sample's boxes leave the ground truth too.
    """
    rows_sample = root[schema.ROW_SAMPLE][:]
    rows_target = root[schema.ROW_TARGET][:].astype(np.int64)
    n_samples, n_classes = root[schema.SAMPLE_LABELS].shape
    sizes = root[schema.SAMPLE_SIZE][:]
    failed = failed_samples(root, n_samples)
    box_sample = root[schema.BOX_SAMPLE][:]
    box_class = root[schema.BOX_CLASS][:].astype(np.int64)
    xyxy = root[schema.BOX_XYXY][:]
    difficult = root[schema.BOX_DIFFICULT][:]
    keep_box = ~failed[box_sample] if len(box_sample) else np.zeros(0, bool)
    box_sample, box_class = box_sample[keep_box], box_class[keep_box]
    xyxy, difficult = xyxy[keep_box], difficult[keep_box]
    rows = scored_rows(rows_sample, rows_target, box_sample, box_class)
    sample, target = rows_sample[rows], rows_target[rows]
    boxes, other_boxes = RowBoxes.of(sample, target, box_sample, box_class, xyxy)
    with_rows = np.zeros(n_samples, dtype=bool)
    with_rows[sample] = True
    with_rows[box_sample] = True
    return RowGeometry(
        rows=rows,
        sample=sample,
        target=target,
        boxes=boxes,
        other_boxes=other_boxes,
        image_sizes=sizes[sample],
        other_class=_other_class(root, sample, target),
        score=_scores(root, sample, target),
        ground_truth={
            "xyxy": xyxy,
            "sample": box_sample,
            "class": box_class,
            "difficult": difficult,
        },
        n_samples=n_samples,
        n_classes=n_classes,
        failed_samples=int(failed.sum()),
        failed_rows=int(failed[rows_sample].sum()) if len(rows_sample) else 0,
        pool=np.flatnonzero(with_rows & ~failed),
    )


def _union_masks(boxes: list[np.ndarray], size: int) -> np.ndarray:
    """Like metrics.box_masks, but a row without boxes gets an empty mask."""
    out = np.zeros((len(boxes), size, size), dtype=bool)
    has = [i for i, b in enumerate(boxes) if len(b)]
    if has:
        out[has] = metrics.box_masks([boxes[i] for i in has], size)
    return out


def score_block(heatmaps: np.ndarray, geometry: RowGeometry, index: np.ndarray) -> dict:
    """Per-row metric values for the scored rows `index` (positions in geometry).

    Rows whose map holds NaN or +-Inf get nan everywhere (``finite`` False).
    """
    boxes = [geometry.boxes[i] for i in index]
    size = heatmaps.shape[-1]
    masks = metrics.box_masks(boxes, size)
    ranked = metrics.rank_rows(heatmaps)  # one sort per row, shared by four metrics
    finite = ranked.finite
    hit = metrics.pointing_game_hits(heatmaps, boxes, geometry.image_sizes[index], ranked=ranked)
    other = _union_masks([geometry.other_boxes[i] for i in index], size) & ~masks
    has_other = np.array([len(geometry.other_boxes[i]) > 0 for i in index], dtype=bool)
    mass, other_mass = metrics.relevance_masses(heatmaps, [masks, other])
    return {
        "finite": finite,
        "hit": np.where(finite, hit, np.nan),
        "hard": metrics.hard_subset(masks, geometry.other_class[index]),
        "box_share": masks.reshape(len(index), -1).mean(axis=1),
        "mass": mass,
        "other_mass": np.where(has_other, other_mass, np.nan),
        "mass_weighted": metrics.relevance_mass_weighted(heatmaps, masks, mass=mass),
        "rank": metrics.relevance_rank(heatmaps, masks, ranked),
        "pixel_ap": metrics.pixel_average_precision(heatmaps, masks, ranked),
        "box": metrics.heatmap_boxes(heatmaps, ranked=ranked),
    }


def design_of(geometry: RowGeometry) -> aggregate.Design:
    gt = geometry.ground_truth
    return aggregate.Design(
        sample=geometry.sample,
        target=geometry.target,
        n_samples=geometry.n_samples,
        n_classes=geometry.n_classes,
        gt_sample=gt["sample"],
        gt_class=gt["class"],
        gt_counts=~np.asarray(gt["difficult"], dtype=bool),
        pool=geometry.pool,
    )


def scored_source(per_row: dict, geometry: RowGeometry, design: aggregate.Design):
    """The per-row values of one source in the names aggregate.py expects."""
    hard = per_row["hard"]
    values = {
        "pointing_game": per_row["hit"],
        "pointing_game_difficult": np.where(hard, per_row["hit"], np.nan),
        "relevance_mass": per_row["mass"],
        "relevance_mass_weighted": per_row["mass_weighted"],
        "relevance_rank": per_row["rank"],
        "pixel_ap": per_row["pixel_ap"],
        "other_class_mass": per_row["other_mass"],
        "class_discriminativity": per_row["mass"] - per_row["other_mass"],
    }
    gt = geometry.ground_truth
    matches = aggregate.box_matches(
        design, per_row["box"], geometry.score, gt["xyxy"], gt["difficult"]
    )
    return aggregate.Scored(values, matches)


def _value(x) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 6)


def aggregate_source(scored: aggregate.Scored, design: aggregate.Design) -> dict:
    """The contract's metrics (and heatjob's additions) of one source."""
    table = aggregate.per_class(scored, design, np.ones(design.n_samples))
    summary = aggregate.summarise(table)
    out: dict[str, float | int | None] = {k: _value(summary[k]) for k in aggregate.AGGREGATES}
    out["n_rows"] = int(table["n_rows"].sum())
    return {k: out[k] for k in schema.METRIC_NAMES}


def class_tables(scored, design, classes: list[str]) -> dict[str, dict[str, float | None]]:
    """{class name: {metric: value}} for the classes that have scored rows."""
    table = aggregate.per_class(scored, design, np.ones(design.n_samples))
    out = {}
    for c in np.unique(design.target):
        row = {k: _value(table[k][c]) for k in aggregate.AGGREGATES}
        row["n_rows"] = int(table["n_rows"][c])
        out[classes[c] if c < len(classes) else str(c)] = row
    return out


def size_tables(scored, design, box_share: np.ndarray) -> dict[str, dict[str, float | None]]:
    """{size bin: {metric: value}}; box AP is not split by size (its GT is per class)."""
    out = {}
    for name, rows in aggregate.size_bins(box_share).items():
        table = aggregate.per_class(scored, design, np.ones(design.n_samples), rows=rows)
        summary = aggregate.summarise(table, with_box_ap=False)
        out[name] = {k: _value(summary[k]) for k in aggregate.AGGREGATES if k != "box_ap50"}
        out[name]["n_rows"] = int(table["n_rows"].sum())
    return out


def unit_blocks(root, info: StoreInfo, geometry: RowGeometry) -> Iterator:
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


def block_maps(arrays: dict, unit, rows: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The heatmaps of every source and baseline at store rows `rows` of one unit, in the
    dtype they are scored in (float16 maps are ranked by uint16 keys, others as float32)."""
    local = rows - unit.row_start
    maps = {c: a[unit.row_start : unit.row_stop][local] for c, a in arrays.items()}
    maps["baseline:random"] = random_heatmaps(rows, size)
    maps["baseline:centre"] = centre_heatmaps(rows, size)
    out = {}
    for name, heatmaps in maps.items():
        heatmaps = np.asarray(heatmaps)
        out[name] = heatmaps if heatmaps.dtype == np.float16 else heatmaps.astype(np.float32)
    return out


def score_unit(arrays: dict, unit, geometry: RowGeometry, index: np.ndarray, size: int) -> dict:
    """{source: per-row values} of the scored rows `index` (positions in geometry) of one
    unit: one shard of each source read, scored, let go."""
    maps = block_maps(arrays, unit, geometry.rows[index], size)
    return {name: score_block(heatmaps, geometry, index) for name, heatmaps in maps.items()}


def heatmap_arrays(root, info: StoreInfo) -> dict:
    return {c: root[schema.heatmaps(c)] for c in info.composites}


def source_names(info: StoreInfo) -> list[str]:
    return [*info.composites, *schema.BASELINES]


def join_blocks(names: list[str], blocks: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """The per-unit (or per-task) values of each source concatenated in row order."""
    per_row: dict[str, dict[str, list]] = {name: {} for name in names}
    for block in blocks:
        for name, values in block.items():
            for key, v in values.items():
                per_row[name].setdefault(key, []).append(v)
    empty = {"box": np.zeros((0, 4))}
    return {
        name: {k: np.concatenate(v) for k, v in values.items()} if values else dict(empty)
        for name, values in per_row.items()
    }


def score_store(root, info, geometry, progress: bool) -> dict[str, dict[str, np.ndarray]]:
    """Stream the store one unit (= one shard per composite) at a time: per-row values."""
    arrays = heatmap_arrays(root, info)
    blocks = list(unit_blocks(root, info, geometry))
    scored = [
        score_unit(arrays, unit, geometry, index, info.image_size)
        for unit, index in tqdm(
            blocks, desc="merge", unit="shard", disable=not progress, file=sys.stderr, leave=False
        )
    ]
    return join_blocks(source_names(info), scored)


def write_row_arrays(root, info, geometry, per_row: dict) -> None:
    """metrics/<composite>/<metric> (one value per store row, nan where not scored), rows/*."""

    def put(name: str, values: np.ndarray, fill) -> None:
        write_row_array(root, name, geometry.rows, values, fill)

    for composite in info.composites:
        values = per_row[composite]
        source = {
            "pointing_game": values["hit"],
            "relevance_mass": values["mass"],
            "relevance_mass_weighted": values["mass_weighted"],
            "relevance_rank": values["rank"],
            "pixel_ap": values["pixel_ap"],
            "other_class_mass": values["other_mass"],
        }
        for name in schema.ROW_METRICS:
            put(schema.metric(composite, name), source[name].astype(np.float64), np.nan)
        put(schema.metric(composite, schema.HEATMAP_BOX), values["box"].astype(np.float32), np.nan)
    first = per_row[info.composites[0]]
    put(schema.ROW_SCORED, np.ones(len(geometry.rows), dtype=bool), False)
    put(schema.ROW_HARD, first["hard"].astype(bool), False)
    put(schema.ROW_BOX_SHARE, first["box_share"].astype(np.float64), np.nan)


def merge(
    path: str,
    json_path: str | None = None,
    progress: bool = True,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    figure: str | None = None,
) -> MergeReport:
    """Score every composite of a finished store; write results to its attributes.

    Per-row values go to arrays first and the attributes last; the old attributes
    are removed before anything is written, so an interrupted merge never leaves
    results that its arrays do not back.

    In this process, Ray not imported; `heatjob.eval.merge_tasks.merge_on_ray` scores the
    units in Ray tasks instead, with the same numbers.
    """
    return merge_with(score_store, path, json_path, progress, resamples, seed, figure)


def merge_with(
    score,
    path: str,
    json_path: str | None = None,
    progress: bool = True,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    figure: str | None = None,
) -> MergeReport:
    """merge, its per-row values from `score(root, info, geometry, progress)`."""
    root, info = open_store(path, mode="r+")
    done = done_units(root)
    if not done.all():
        raise HeatjobError(
            f"store {path} is not finished: {int(done.sum())} of {len(done)} units done; "
            "run `heatjob submit` again to finish it"
        )
    for key in schema.MERGE_ATTRIBUTES:
        if key in root.attrs:
            del root.attrs[key]
    notes: list[str] = []
    report = MergeReport(path, {}, {}, notes)
    geometry = row_geometry(root) if info.has_boxes else None
    if geometry is None or len(geometry.rows) == 0:
        notes.append(
            "box metrics skipped: the data set has no boxes"
            if geometry is None
            else "nothing scored: no row's target class has a box in its sample"
        )
        empty = {name: None for name in schema.METRIC_NAMES} | {"n_rows": 0}
        report.metrics = {c: dict(empty) for c in info.composites}
        report.baselines = {b: dict(empty) for b in schema.BASELINES}
    else:
        n_rows = root[schema.ROW_SAMPLE].shape[0]
        report.excluded_failed = geometry.failed_rows
        if geometry.failed_rows:
            notes.append(
                f"{geometry.failed_rows} rows of {geometry.failed_samples} failed samples "
                "excluded from every metric (samples/failed)"
            )
        unboxed = n_rows - len(geometry.rows) - geometry.failed_rows
        if unboxed > 0:
            notes.append(
                f"{unboxed} of {n_rows} rows not scored: "
                "their target class has no box in the sample"
            )
        per_row = score(root, info, geometry, progress)
        design = design_of(geometry)
        sources = {
            name: scored_source(values, geometry, design) for name, values in per_row.items()
        }
        for composite in info.composites:
            bad = int((~per_row[composite].get("finite", np.ones(0, bool))).sum())
            if bad:
                notes.append(f"{composite}: {bad} rows with NaN or Inf in the heatmap not scored")
        scored = {name: aggregate_source(s, design) for name, s in sources.items()}
        report.metrics = {c: scored[c] for c in info.composites}
        report.baselines = {b: scored[b] for b in schema.BASELINES}
        classes = list(info.attrs.get("classes", []))
        box_share = per_row[info.composites[0]]["box_share"]
        report.per_class = {n: class_tables(s, design, classes) for n, s in sources.items()}
        report.by_size = {n: size_tables(s, design, box_share) for n, s in sources.items()}
        report.intervals = aggregate.bootstrap(sources, design, resamples, seed)
        write_row_arrays(root, info, geometry, per_row)

    n_samples = root[schema.SAMPLE_ID].shape[0]
    score_curves(root, info, failed_samples(root, n_samples), resamples, seed, report)
    root.attrs["metrics"] = report.metrics
    root.attrs["baselines"] = report.baselines
    root.attrs["intervals"] = report.intervals
    root.attrs["per_class"] = report.per_class
    root.attrs["by_size"] = report.by_size
    root.attrs["merged"] = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "notes": notes,
        "excluded_failed_rows": report.excluded_failed,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "unit": "sample"},
        "faithfulness": report.faithfulness,
    }
    consolidate(root)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report.metrics, indent=2) + "\n")
    if figure:
        from heatjob.view.render import metrics_figure

        metrics_figure(report, figure)
    return report
