"""`heatjob submit`: validate, plan, create or resume the store, run the units.

Everything that can be wrong with a spec is found here, in the driver, before
Ray starts or the store is touched.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from heatjob.data.base import read_records, scale_boxes
from heatjob.errors import DataError, HeatjobError, SpecError
from heatjob.location import Location, is_url
from heatjob.lrp import composite_names, ensure_supported
from heatjob.models import build_model, file_sha256
from heatjob.plan import Plan, make_plan
from heatjob.runner import connect, plan_workers, run_units
from heatjob.spec import JobSpec, parse_spec, with_overrides
from heatjob.store import (
    StoreInfo,
    add_failure_records,
    create_store,
    done_flags,
    finish_unit,
    open_store,
    provenance,
)
from heatjob.worker import UnitResult, open_job_dataset


@dataclass(frozen=True)
class SubmitSummary:
    store: str
    units_total: int
    units_run: int
    rows: int
    seconds: float
    workers: str


@dataclass(frozen=True)
class PreparedJob:
    spec: JobSpec
    num_classes: int
    classes: list[str]
    has_boxes: bool
    plan: Plan
    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    checkpoint_sha256: str
    failures: dict[int, str]  # samples whose annotation could not be read: index -> reason


def apply_options(
    spec: JobSpec, store: str | None = None, limit: int | None = None, workers: int | None = None
) -> JobSpec:
    """The spec with the command line's overrides."""
    return with_overrides(
        spec,
        store={"path": store} if store else {},
        dataset={"limit": limit} if limit is not None else {},
        run={"workers": workers} if workers is not None else {},
    )


def prepare(spec: JobSpec, progress: bool = True) -> PreparedJob:
    """Check everything the spec names and read the annotations; no store, no Ray."""
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
    model = build_model(m.arch, num_classes, m.weights, m.checkpoint, source=src)
    ensure_supported(model)
    del model

    failures: dict[int, str] = {}
    records = read_records(dataset, progress=progress, failures=failures)
    if not records:
        raise SpecError(f"{src}: [dataset] has no samples (root {spec.dataset.root!r})")
    size = spec.dataset.image_size
    labels = np.zeros((len(records), num_classes), dtype=bool)
    boxes, box_sample, box_class, box_difficult = [], [], [], []
    for i, record in enumerate(records):
        labels[i, list(record.labels)] = True
        boxes.append(scale_boxes(record.boxes, record.height, record.width, size))
        box_sample.append(np.full(len(record.boxes), i, dtype=np.int64))
        box_class.append(record.box_classes)
        box_difficult.append(record.box_difficult)
    plan = make_plan(
        [r.labels for r in records],
        spec.attribution.targets,
        num_classes,
        spec.run.shard_size,
        skip=[i in failures for i in range(len(records))],
    )
    if plan.n_rows == 0 and failures:
        first = min(failures)
        raise DataError(
            f"{src}: no heatmap rows: {len(failures)} of {len(records)} samples failed, "
            f"first: {failures[first]}"
        )
    if plan.n_rows == 0:
        raise SpecError(f"{src}: no heatmap rows: no sample has a target class")
    arrays = {
        "sizes": np.array([(r.height, r.width) for r in records], dtype=np.int32),
        "labels": labels,
        "boxes_xyxy": np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        "boxes_sample": np.concatenate(box_sample),
        "boxes_class": np.concatenate(box_class).astype(np.int32),
        "boxes_difficult": np.concatenate(box_difficult).astype(bool),
    }
    sha = file_sha256(m.checkpoint) if m.checkpoint else ""
    return PreparedJob(
        spec,
        num_classes,
        classes,
        dataset.has_boxes,
        plan,
        arrays,
        [r.id for r in records],
        sha,
        failures,
    )


def _create(job: PreparedJob) -> zarr.Group:
    spec, a = job.spec, job.arrays
    attrs = provenance(
        spec.to_dict(),
        job.classes,
        job.checkpoint_sha256,
        job.plan.shard_size,
        job.has_boxes,
        len(job.plan.units),
    )
    return create_store(
        spec.store.path,
        attrs,
        job.plan,
        job.sample_ids,
        a["sizes"],
        a["labels"],
        a["boxes_sample"],
        a["boxes_class"],
        a["boxes_xyxy"],
        a["boxes_difficult"],
        spec.attribution.composites,
        spec.dataset.image_size,
        spec.store.dtype,
        spec.store.storage_options,
        sample_failures=job.failures,
    )


_STORE_NAMES = {"zarr.json", "samples", "boxes", "rows", "heatmaps", "units"}


def _refuse_overwrite(location: Location) -> None:
    """--overwrite deletes only a heatjob store (or a half-created one), never other data."""
    if location.is_file():
        raise HeatjobError(f"--overwrite refused: {location.path} is a file, not a heatjob store")
    names = location.names()
    if not names:
        return
    try:
        open_store(location.path, storage_options=location.storage_options)
        return
    except HeatjobError:
        pass
    if not ("zarr.json" in names and names <= _STORE_NAMES):
        raise HeatjobError(
            f"--overwrite refused: {location.path} is not a heatjob store; not touching it"
        )


def _check_resumable(job: PreparedJob, root: zarr.Group, info: StoreInfo) -> None:
    """Refuse to resume a store that another job made, naming what differs."""
    path, stored = info.path, info.attrs
    ours = job.spec.content_dict()
    theirs = parse_spec(stored["spec"], source=path).content_dict()
    for section, values in ours.items():
        for key, value in values.items():
            if theirs[section].get(key) != value:
                raise HeatjobError(
                    f"store {path} was made by a different spec: [{section}] {key} is "
                    f"{theirs[section].get(key)!r} there, {value!r} here; use --overwrite "
                    "to start over"
                )
    if not np.array_equal(root["rows/sample"][:], job.plan.rows_sample):
        raise HeatjobError(
            f"store {path} holds other rows than this spec plans (has the data set changed?); "
            "use --overwrite to start over"
        )
    if stored.get("checkpoint_sha256", "") != job.checkpoint_sha256:
        raise HeatjobError(
            f"store {path} was made with a different checkpoint file (sha256 differs); "
            "use --overwrite to start over"
        )


def submit(
    spec: JobSpec, *, address: str | None = None, overwrite: bool = False, progress: bool = True
) -> SubmitSummary:
    """Run (or resume) a job; returns what was done."""
    started = time.perf_counter()
    job = prepare(spec, progress=progress)
    path = spec.store.path
    location = Location(path, spec.store.storage_options)
    location.check_container()
    if location.is_file():
        raise HeatjobError(f"store path {path} is a file, not a Zarr store")
    if overwrite:
        _refuse_overwrite(location)
        location.delete()
    resuming = bool(location.names())
    units = job.plan.units
    if resuming:
        try:
            root, info = open_store(path, mode="r+", storage_options=spec.store.storage_options)
        except HeatjobError as exc:
            raise HeatjobError(f"{path} is not a heatjob store; not touching it ({exc})") from None
        _check_resumable(job, root, info)
        add_failure_records(root, len(units), len(job.sample_ids), job.failures)
        done = done_flags(root)
        pending = [u for u in units if not done[u.index]]
        if not pending:
            return SubmitSummary(path, len(units), 0, 0, time.perf_counter() - started, "none")

    started_ray = connect(address)  # first, so a wrong address leaves no new store behind
    try:
        if not resuming:
            if not is_url(path):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            root = _create(job)
            pending = list(units)
        workers = plan_workers(
            spec.run.workers, spec.run.device, len(pending), spec.run.num_gpus
        )
        rows_todo = sum(u.n_rows for u in pending)
        bar = tqdm(
            total=rows_todo,
            desc=f"heatmaps ({workers.describe()})",
            unit="row",
            disable=not progress,
            file=sys.stderr,
            smoothing=0.1,
        )

        def on_result(result: UnitResult, attempts: int) -> None:
            finish_unit(
                root,
                result.unit,
                result.owned,
                result.logits,
                result.row_targets,
                writer=(result.host, result.node, result.pid),
                checksum=result.checksum,
                attempts=attempts,
                failures=result.failures,
            )
            bar.update(result.unit.n_rows)

        with bar:
            run_units(
                spec.to_dict(),
                path,
                job.num_classes,
                len(job.sample_ids),
                job.plan.rows_sample,
                job.plan.rows_target,
                pending,
                workers,
                on_result,
            )
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return SubmitSummary(
        path,
        len(units),
        len(pending),
        rows_todo,
        time.perf_counter() - started,
        workers.describe(),
    )
