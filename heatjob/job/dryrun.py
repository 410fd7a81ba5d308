"""`heatjob submit --dry-run`: the plan, the store's size and the time, before spending them.

Validates and plans exactly as submit does, then calibrates on one batch in this
process: a worker is built as a Ray actor would build it (same threads, same
device), one batch of rows spread over the data set is loaded, run forward and
explained with every composite, and its heatmaps are written into an in-memory
Zarr array shaped like the store's, so the bytes per row are the codec's own.
Nothing is written to the store location and no Ray is started (with
`--address` the cluster is asked for its resources only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from heatjob.job.plan import MIN_UNITS, SHARD_RANGE_BYTES, SHARD_TARGET_BYTES, suggested_shard_size
from heatjob.job.prepare import PreparedJob, heatmap_row_bytes, prepare
from heatjob.job.runner import WorkerPlan, cluster_resources, plan_workers
from heatjob.job.state import store_state
from heatjob.job.worker import UnitWorker
from heatjob.spec import JobSpec
from heatjob.store.layout import stored_bytes_per_row

RAY_START_SECONDS = 10.0  # a local ray.init on a small machine; attaching is ~1 s


@dataclass(frozen=True)
class Calibration:
    rows: int
    samples: int
    device: str
    threads: int
    setup_s: float  # model and explainers, once per worker
    load_s: float  # reading and preprocessing the batch's images
    forward_s: float
    explain_s: float  # every composite
    bytes_per_row: float  # compressed, per composite, shard index included

    @property
    def seconds_per_row(self) -> float:
        """Loading overlaps compute (the loader thread): the slower of the two sets the pace."""
        return max(self.load_s, self.forward_s + self.explain_s) / self.rows


@dataclass(frozen=True)
class DryRun:
    job: PreparedJob
    store_state: str
    units_pending: int
    rows_pending: int
    workers: WorkerPlan
    resources: dict[str, float]
    resources_from: str
    calibration: Calibration

    @property
    def heatmap_bytes(self) -> float:
        return self.calibration.bytes_per_row * self.job.plan.n_rows * self.n_composites

    @property
    def raw_bytes(self) -> int:
        return self.job.plan.n_rows * self.n_composites * heatmap_row_bytes(self.job.spec)

    @property
    def metadata_bytes(self) -> int:
        """The small arrays, uncompressed: ids, sizes, labels, logits, boxes, rows, units."""
        a, n = self.job.arrays, len(self.job.sample_ids)
        ids = int(np.char.str_len(self.job.sample_ids).sum()) + 4 * n
        per_sample = 8 + self.job.num_classes * 5  # size, labels, float32 logits
        boxes = len(a["boxes_sample"]) * (8 + 4 + 16 + 1)
        return ids + n * per_sample + boxes + self.job.plan.n_rows * 12

    @property
    def n_composites(self) -> int:
        return len(self.job.spec.attribution.sources)

    @property
    def start_s(self) -> float:
        local = self.resources_from == "this machine"
        return (RAY_START_SECONDS if local else 1.0) + self.calibration.setup_s

    @property
    def compute_s(self) -> float:
        return self.calibration.seconds_per_row * self.rows_pending / self.workers.workers


def calibrate(job: PreparedJob, workers: WorkerPlan) -> Calibration:
    """One batch of rows, spread over the data set, through `UnitWorker.explain` (the path
    every unit takes), timed; heatmaps to memory only."""
    spec = job.spec
    threads_before = torch.get_num_threads()
    try:
        started = time.perf_counter()
        worker = UnitWorker(spec.to_dict(), "", job.num_classes, workers.threads)
        n = min(spec.run.batch_size, job.plan.n_rows)
        rows = np.unique(np.linspace(0, job.plan.n_rows - 1, n).round().astype(np.int64))
        rows_sample, rows_target = job.plan.rows_sample[rows], job.plan.rows_target[rows]
        # one row first: one-time costs (modified weights, kernels) are paid once per
        # worker, not per row
        worker.explain(rows_sample[:1], rows_target[:1])
        setup_s = time.perf_counter() - started
        done = worker.explain(rows_sample, rows_target)
    finally:
        torch.set_num_threads(threads_before)
    return Calibration(
        rows=len(rows),
        samples=len(set(rows_sample.tolist())),
        device=str(worker.device),
        threads=workers.threads,
        setup_s=setup_s,
        load_s=done.seconds["load"],
        forward_s=done.seconds["forward"],
        explain_s=done.seconds["explain"],
        bytes_per_row=stored_bytes_per_row(done.heatmaps, spec.store.dtype),
    )


def dry_run(
    spec: JobSpec, address: str | None = None, progress: bool = True, overwrite: bool = False
) -> DryRun:
    """Everything submit would decide, and one calibration batch; the store that submit
    would refuse is refused here with the same error."""
    job = prepare(spec, progress=progress, overwrite=overwrite)
    state = store_state(job, overwrite=overwrite)
    resources, source = cluster_resources(address)
    workers = plan_workers(
        spec.run.workers,
        spec.run.device,
        max(1, len(state.pending)),
        spec.run.num_gpus,
        resources,
    )
    return DryRun(
        job=job,
        store_state=state.describe(len(job.plan.units)),
        units_pending=len(state.pending),
        rows_pending=sum(u.n_rows for u in state.pending),
        workers=workers,
        resources=resources,
        resources_from=source,
        calibration=calibrate(job, workers),
    )


def _sources(spec) -> str:
    """'7 composites, 4 methods': what the heatmap sources of a job are."""
    attr = spec.attribution
    counts = ((len(attr.composites), "composite"), (len(attr.methods), "method"))
    return ", ".join(f"{n} {word}{'s' * (n != 1)}" for n, word in counts if n)


def format_dry_run(run: DryRun) -> str:
    job, spec, cal, w = run.job, run.job.spec, run.calibration, run.workers
    plan, size = job.plan, spec.dataset.image_size
    n_units = len(plan.units)
    lines = [
        ("store", f"{spec.store.path} ({run.store_state})"),
        (
            "data",
            f"{len(job.sample_ids)} samples, {plan.n_rows} heatmap rows "
            f"(targets = {spec.attribution.targets}), {job.num_classes} classes",
        ),
        (
            "work",
            f"{n_units} units of {plan.shard_size} rows, {run.units_pending} to run; "
            f"{run.n_composites} heatmap sources ({_sources(spec)}) -> "
            f"{n_units * run.n_composites} heatmap shards",
        ),
        (
            "workers",
            f"{w.describe()} ({w.num_cpus:g} CPU, {w.num_gpus:g} GPU, {w.threads} torch "
            f"thread{'s' if w.threads != 1 else ''} each) from {run.resources_from}: "
            f"{run.resources.get('CPU', 0):g} CPUs, {run.resources.get('GPU', 0):g} GPUs",
        ),
        (
            "calibration",
            f"{cal.rows} rows ({cal.samples} images) on {cal.device}: load {cal.load_s:.2f} s, "
            f"forward {cal.forward_s:.2f} s, explain x{run.n_composites} {cal.explain_s:.2f} s "
            f"-> {cal.seconds_per_row * 1000:.1f} ms/row; worker set-up {cal.setup_s:.1f} s",
        ),
        (
            "store size",
            f"heatmaps {plan.n_rows} rows x {run.n_composites} x {size}x{size} "
            f"{spec.store.dtype} = {_bytes(run.raw_bytes)} raw, ~{_bytes(run.heatmap_bytes)} "
            f"stored ({cal.bytes_per_row:,.0f} B/row/source, measured); "
            f"other arrays <= {_bytes(run.metadata_bytes)}",
        ),
        ("shards", shard_line(job, cal.bytes_per_row)),
        (
            "estimate",
            f"~{_duration(run.start_s + run.compute_s)}: {_duration(run.compute_s)} of "
            f"compute for {run.rows_pending} rows on {w.describe()} + "
            f"{_duration(run.start_s)} start-up",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def shard_line(job: PreparedJob, bytes_per_row: float) -> str:
    """The `shards` line: the shard size, whether it was automatic and why it is what it
    is, and one heatmap shard object's size (bytes_per_row: measured, compressed)."""
    spec_size, size = job.spec.run.shard_size, job.plan.shard_size
    whole = f", {size} with whole samples" if size != spec_size else ""
    if job.shard_size_from == "spec":
        return f"shard_size {spec_size} (set in the spec{whole}): " + shard_advice(
            size, bytes_per_row
        )
    if job.shard_size_from == "store":
        why = ", as the store being resumed was made with"
    elif spec_size < suggested_shard_size(heatmap_row_bytes(job.spec)):
        why = f", capped: the largest power of two <= {job.plan.n_rows} rows / {MIN_UNITS}"
    else:
        why = ""
    low, high = SHARD_RANGE_BYTES
    return (
        f"shard_size auto: {spec_size} row{'s' * (spec_size != 1)}{whole}{why}, "
        f"~{_bytes(size * heatmap_row_bytes(job.spec))} per heatmap shard raw "
        f"(target {_bytes(SHARD_TARGET_BYTES)}, range {_bytes(low)}..{_bytes(high)}), "
        f"~{_bytes(size * bytes_per_row)} stored (one object)"
    )


def shard_advice(shard_size: int, bytes_per_row: float) -> str:
    """The size of one heatmap shard object at this shard_size, and a shard_size that puts
    it in the range object stores serve well, when it is outside."""
    size = shard_size * bytes_per_row
    text = f"~{_bytes(size)} per heatmap shard (one object, {shard_size} rows)"
    low, high = SHARD_RANGE_BYTES
    if low <= size <= high:
        return text + f"; within {_bytes(low)}..{_bytes(high)}"
    better = suggested_shard_size(bytes_per_row)
    return (
        text + f"; outside {_bytes(low)}..{_bytes(high)}: [run] shard_size = {better} "
        f"gives ~{_bytes(better * bytes_per_row)} (fewer requests per heatmap)"
    )


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
