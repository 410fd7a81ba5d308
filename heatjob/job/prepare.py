"""Planning in the driver: check everything the spec names, read the annotations, and
build the arrays the store starts with and the plan of rows and units.

No store, except its root attribute when an automatic [run] shard_size is to be kept
from a store being resumed: `submit` and `submit --dry-run` both start here. The
annotations of a large data set are read in Ray tasks when the caller offers a cluster
(heatjob.job.annotations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatjob.attribution.lrp import composite_names, ensure_supported
from heatjob.data import open_job_dataset
from heatjob.errors import DataError, SpecError
from heatjob.job.annotations import MapBlocks, read_annotations
from heatjob.job.plan import Labels, Plan, auto_shard_size, plan_rows, plan_units
from heatjob.models import build_model, file_sha256
from heatjob.spec import JobSpec, with_overrides
from heatjob.store.layout import stored_shard_size


@dataclass(frozen=True)
class PreparedJob:
    spec: JobSpec
    num_classes: int
    classes: list[str]
    has_boxes: bool
    plan: Plan
    labels: Labels  # the classes present in each sample, as pairs
    arrays: dict[str, np.ndarray]  # sizes and boxes
    sample_ids: np.ndarray  # (N,) str
    checkpoint_sha256: str
    failures: dict[int, str]  # samples whose annotation could not be read: index -> reason
    boxes_cropped_away: int = 0  # boxes that [dataset] resize = "crop" cut away entirely
    # where spec.run.shard_size came from: "spec" (set there), "auto" (computed) or
    # "store" (automatic, kept from the store being resumed); see resolve_shard_size
    shard_size_from: str = "spec"


def prepare(
    spec: JobSpec,
    progress: bool = True,
    overwrite: bool = False,
    on_cluster: Callable[[], MapBlocks] | None = None,
) -> PreparedJob:
    """Check everything the spec names and read the annotations.

    The job's spec is the resolved one: Grad-CAM layers and [run] shard_size filled in.
    An automatic shard_size is that of the spec stored in a heatjob store already at the
    store path (so it resumes), unless `overwrite` (submit --overwrite) replaces it.
    on_cluster: gives the map that reads the annotations of a large data set in Ray tasks
    (heatjob.job.annotations); without it, or for a small one, they are read here.
    """
    src = spec.source
    known = composite_names()
    for name in spec.attribution.composites:
        if name not in known:
            raise SpecError(
                f"{src}: [attribution] composites: unknown composite {name!r} "
                "(`heatjob composites` lists them)"
            )
    if spec.dataset.kind != "synthetic" and not Path(spec.dataset.root).is_dir():
        raise SpecError(f"{src}: [dataset] root: no such folder: {spec.dataset.root}")
    for key in ("annotations", "synsets"):  # coco, imagenet
        value = getattr(spec.dataset, key)
        if value and not Path(value).exists():
            raise SpecError(f"{src}: [dataset] {key}: no such file or folder: {value}")
    dataset = open_job_dataset(spec)
    classes = list(dataset.classes)
    num_classes = spec.model.num_classes or len(classes)
    if num_classes != len(classes):
        raise SpecError(
            f"{src}: [model] num_classes = {num_classes} but the {spec.dataset.kind} data set "
            f"has {len(classes)} classes"
        )
    if spec.attribution.predicted_k > num_classes:
        raise SpecError(
            f"{src}: [attribution] targets {spec.attribution.targets!r} asks for more "
            f"than the {num_classes} classes"
        )
    m = spec.model
    model = build_model(m.arch, num_classes, m.weights, m.checkpoint, source=src, options=m.options)
    fixed_size = getattr(model, "image_size", None)  # a ViT takes one input size only
    if isinstance(fixed_size, int) and fixed_size != spec.dataset.image_size:
        raise SpecError(
            f"{src}: [dataset] image_size = {spec.dataset.image_size} but {m.arch} takes "
            f"{fixed_size} x {fixed_size} inputs; set [model] options = {{ image_size = "
            f"{spec.dataset.image_size} }}"
        )
    if spec.attribution.composites:  # the LRP engine's layers; the methods need autograd only
        ensure_supported(model)
    spec = _resolve_method_layers(spec, model)
    del model

    if len(dataset) == 0:
        raise SpecError(f"{src}: [dataset] has no samples (root {spec.dataset.root!r})")
    store_shard_size = 0
    if not spec.run.shard_size and not overwrite:
        store_shard_size = stored_shard_size(spec.store.path, spec.store.storage_options)
    notes = read_annotations(dataset, spec, num_classes, progress, on_cluster)
    failures = notes.failures
    job = job_from_arrays(
        spec,
        notes.labels(num_classes),
        classes=classes,
        sample_ids=notes.ids,
        sizes=notes.sizes,
        boxes_xyxy=notes.boxes_xyxy,
        boxes_sample=notes.boxes_sample,
        boxes_class=notes.boxes_class,
        boxes_difficult=notes.boxes_difficult,
        has_boxes=dataset.has_boxes,
        checkpoint_sha256=file_sha256(m.checkpoint) if m.checkpoint else "",
        failures=failures,
        boxes_cropped_away=notes.cropped_away,
        store_shard_size=store_shard_size,
    )
    if job.plan.n_rows == 0 and failures:
        first = min(failures)
        raise DataError(
            f"{src}: no heatmap rows: {len(failures)} of {len(notes)} samples failed, "
            f"first: {failures[first]}"
        )
    if job.plan.n_rows == 0:
        raise SpecError(f"{src}: no heatmap rows: no sample has a target class")
    return job


def _resolve_method_layers(spec: JobSpec, model) -> JobSpec:
    """Grad-CAM layers checked against the model, and the default ("") replaced by the
    path it stands for, so the store's provenance names the layer."""
    from heatjob.attribution.gradcam import default_layer, has_layer
    from heatjob.attribution.lrp_method import check_layers

    methods = dict(spec.attribution.methods)
    for name, table in methods.items():
        if table["kind"] == "lrp" and (path := check_layers(table, model)) is not None:
            raise SpecError(
                f"{spec.source}: [attribution.methods.{name}] layers: {path!r} is not a Conv2d "
                f"or Linear module of the {spec.model.arch} model"
            )
        if table["kind"] != "gradcam":
            continue
        where = f"{spec.source}: [attribution.methods.{name}] layer"
        if not table["layer"]:
            try:
                methods[name] = {**table, "layer": default_layer(model)}
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from None
        elif not has_layer(model, table["layer"]):
            raise SpecError(
                f"{where} {table['layer']!r} is not a module of the {spec.model.arch} model"
            )
    if methods == spec.attribution.methods:
        return spec
    return with_overrides(spec, attribution={"methods": methods})


def heatmap_row_bytes(spec: JobSpec) -> int:
    """One heatmap row uncompressed: image_size x image_size x the [store] dtype's itemsize."""
    return spec.dataset.image_size**2 * np.dtype(spec.store.dtype).itemsize


def resolve_shard_size(spec: JobSpec, n_rows: int, store_shard_size: int = 0) -> tuple[int, str]:
    """[run] shard_size as the job runs it, and where it comes from: "spec" (set there),
    "store" (automatic, and a store being resumed was made with `store_shard_size`) or
    "auto" (automatic: heatjob.job.plan.auto_shard_size of the job's rows and row bytes)."""
    if spec.run.shard_size:
        return spec.run.shard_size, "spec"
    if store_shard_size:
        return store_shard_size, "store"
    return auto_shard_size(n_rows, heatmap_row_bytes(spec)), "auto"


def job_from_arrays(
    spec: JobSpec,
    labels: Labels | np.ndarray,
    *,
    classes: list[str] | None = None,
    sample_ids: list[str] | None = None,
    sizes: np.ndarray | None = None,
    boxes_xyxy: np.ndarray | None = None,
    boxes_sample: np.ndarray | None = None,
    boxes_class: np.ndarray | None = None,
    boxes_difficult: np.ndarray | None = None,
    has_boxes: bool = True,
    checkpoint_sha256: str = "",
    failures: dict[int, str] | None = None,
    boxes_cropped_away: int = 0,
    store_shard_size: int = 0,
) -> PreparedJob:
    """A prepared job from annotation arrays: what `prepare` builds from a data set, and
    what benchmarks and tests build to make a real store of known contents.

    labels: classes present per sample, as Labels or an (N, C) bool matrix. Boxes are in
    heatmap pixels; absent arrays mean no boxes, sample ids "0", "1", ... and sizes of image_size.
    store_shard_size: the shard_size an automatic one keeps (resolve_shard_size).
    The job's spec holds the shard_size the rows were split by.
    """
    if not isinstance(labels, Labels):
        labels = Labels.of(np.asarray(labels, dtype=bool), 0)
    n, num_classes = labels.shape
    failures = dict(failures or {})
    targets = spec.attribution.targets
    skip = np.zeros(n, dtype=bool)
    skip[list(failures)] = True
    rows_sample, rows_target = plan_rows(labels, targets, num_classes, skip)
    shard_size, shard_size_from = resolve_shard_size(spec, len(rows_sample), store_shard_size)
    if shard_size != spec.run.shard_size:
        spec = with_overrides(spec, run={"shard_size": shard_size})
    plan = plan_units(rows_sample, rows_target, targets, num_classes, shard_size)
    size = spec.dataset.image_size
    arrays = {
        "sizes": np.full((n, 2), size, np.int32) if sizes is None else np.asarray(sizes, np.int32),
        "boxes_xyxy": np.asarray(
            np.zeros((0, 4)) if boxes_xyxy is None else boxes_xyxy, np.float32
        ).reshape(-1, 4),
        "boxes_sample": np.asarray(np.zeros(0) if boxes_sample is None else boxes_sample, np.int64),
        "boxes_class": np.asarray(np.zeros(0) if boxes_class is None else boxes_class, np.int32),
    }
    n_boxes = len(arrays["boxes_sample"])
    arrays["boxes_difficult"] = (
        np.zeros(n_boxes, bool) if boxes_difficult is None else np.asarray(boxes_difficult, bool)
    )
    return PreparedJob(
        spec=spec,
        num_classes=num_classes,
        classes=list(classes) if classes is not None else [str(c) for c in range(num_classes)],
        has_boxes=has_boxes,
        plan=plan,
        labels=labels,
        arrays=arrays,
        sample_ids=np.asarray(sample_ids if sample_ids is not None else np.arange(n), dtype=str),
        checkpoint_sha256=checkpoint_sha256,
        failures=failures,
        boxes_cropped_away=boxes_cropped_away,
        shard_size_from=shard_size_from,
    )
