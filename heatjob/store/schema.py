"""Every name in a heatjob store, once: array paths, their dimension names, metric names.

docs/store.md describes what each array holds; other tools read these paths, so they
change only with STORE_FORMAT.
Pure: no Zarr, no torch.
"""

from __future__ import annotations

STORE_FORMAT = 2  # bumped when the layout changes
READABLE_FORMATS = (1, 2)  # 1: 0.2.0, where the driver wrote the unit records
ROOT_ATTRIBUTE = "heatjob"  # the root attribute holding provenance (version, spec, classes)

GROUPS = ("samples", "boxes", "rows", "heatmaps", "units")  # made by submit
MERGE_GROUP = "metrics"  # made by merge

# per sample
SAMPLE_ID = "samples/id"
SAMPLE_SIZE = "samples/size"
SAMPLE_LABELS = "samples/labels"
SAMPLE_LOGITS = "samples/logits"
SAMPLE_FAILED = "samples/failed"  # the sample's annotation or image could not be read
SAMPLE_FAILURE = "samples/failure"  # why, one line
# per box
BOX_SAMPLE = "boxes/sample"
BOX_CLASS = "boxes/class"
BOX_XYXY = "boxes/xyxy"
BOX_DIFFICULT = "boxes/difficult"
# per heatmap row
ROW_SAMPLE = "rows/sample"
ROW_TARGET = "rows/target"
ROW_SCORED = "rows/scored"  # merge: the row has a box of its target and was scored
ROW_HARD = "rows/hard"  # merge: the row counts for pointing_game_difficult
ROW_BOX_SHARE = "rows/box_share"  # merge: share of the image its target's boxes cover
# per unit of work
UNIT_DONE = "units/done"
UNIT_HOST = "units/host"
UNIT_NODE = "units/node"
UNIT_PID = "units/pid"
UNIT_ATTEMPTS = "units/attempts"
UNIT_CHECKSUM = "units/checksum"
# perturbation curves (heatjob.store.curves): curves/<source>/<order>, and per unit
CURVES_DONE = "curves/done"  # the unit's curves are written
FAITHFULNESS_ATTRIBUTE = "faithfulness"  # root attribute: the settings of the curves
CURVE_DIMENSIONS = ("row", "step")
# format 2: written by the worker that ran the unit, one chunk per unit
UNIT_LOGITS = "units/logits"  # (U, P, C) the logits of the samples the unit owns
UNIT_RECORD = "units/record"  # (U,) JSON: writer, attempts, checksum, failures; the done record

HEATMAP_BOX = "heatmap_box"  # metrics/<source>/heatmap_box: the box merge took from the map

DIMENSIONS: dict[str, tuple[str, ...]] = {
    SAMPLE_ID: ("sample",),
    SAMPLE_SIZE: ("sample", "hw"),
    SAMPLE_LABELS: ("sample", "class"),
    SAMPLE_LOGITS: ("sample", "class"),
    SAMPLE_FAILED: ("sample",),
    SAMPLE_FAILURE: ("sample",),
    BOX_SAMPLE: ("box",),
    BOX_CLASS: ("box",),
    BOX_XYXY: ("box", "xyxy"),
    BOX_DIFFICULT: ("box",),
    ROW_SAMPLE: ("row",),
    ROW_TARGET: ("row",),
    ROW_SCORED: ("row",),
    ROW_HARD: ("row",),
    ROW_BOX_SHARE: ("row",),
    UNIT_DONE: ("unit",),
    UNIT_HOST: ("unit",),
    UNIT_NODE: ("unit",),
    UNIT_PID: ("unit",),
    UNIT_ATTEMPTS: ("unit",),
    UNIT_CHECKSUM: ("unit",),
    CURVES_DONE: ("unit",),
    UNIT_LOGITS: ("unit", "owned", "class"),
    UNIT_RECORD: ("unit",),
}
HEATMAP_DIMENSIONS = ("row", "y", "x")


def heatmaps(source: str) -> str:
    """The array of one composite's heatmaps."""
    return f"heatmaps/{source}"


def curve(source: str, order: str) -> str:
    """One source's perturbation curves in one order: (rows, steps + 1) target logits."""
    return f"curves/{source}/{order}"


def metric(source: str, name: str) -> str:
    """A per-row metric array that merge writes for one composite."""
    return f"metrics/{source}/{name}"


# The metrics merge reports per composite, in table order (docs/metrics.md defines them).
METRIC_NAMES = (
    "pointing_game",
    "pointing_game_difficult",
    "relevance_mass",
    "relevance_mass_weighted",
    "relevance_rank",
    "pixel_ap",
    "box_ap50",
    "class_discriminativity",
    "other_class_mass",
    "n_rows",
)
# the per-row metrics, written to metrics/<composite>/<name> (one value per store row)
ROW_METRICS = (
    "pointing_game",
    "relevance_mass",
    "relevance_mass_weighted",
    "relevance_rank",
    "pixel_ap",
    "other_class_mass",
)


# faithfulness, reported by merge beside the metrics when the store has curves:
# aopc_<order> per source (heatjob.eval.faithfulness.aopc)
def aopc_metric(order: str) -> str:
    return f"aopc_{order}"


# scored beside the composites on the same rows
BASELINES = ("baseline:random", "baseline:centre")
# short column labels for text tables and figures
METRIC_LABELS = {
    "pointing_game": "PG",
    "pointing_game_difficult": "PG-hard",
    "relevance_mass": "mu",
    "relevance_mass_weighted": "mu_w",
    "relevance_rank": "rank",
    "pixel_ap": "pixAP",
    "box_ap50": "boxAP50",
    "class_discriminativity": "discr",
    "other_class_mass": "other",
    "n_rows": "rows",
}
# titles for figures
METRIC_TITLES = {
    "pointing_game": "pointing game",
    "pointing_game_difficult": "pointing game (hard)",
    "relevance_mass": "relevance mass μ",
    "relevance_mass_weighted": "size-weighted μ_w",
    "relevance_rank": "relevance rank",
    "pixel_ap": "pixel AP",
    "box_ap50": "box AP@0.5",
    "class_discriminativity": "class discriminativity",
    "other_class_mass": "relevance mass on other classes",
    "n_rows": "rows scored",
}
# the merge attributes beside the root's provenance; merge removes them before it writes
MERGE_ATTRIBUTES = ("merged", "metrics", "baselines", "intervals", "per_class", "by_size")
