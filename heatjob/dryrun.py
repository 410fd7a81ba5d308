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

import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import zarr

from heatjob.errors import HeatjobError
from heatjob.location import Location
from heatjob.plan import PENDING_TARGET
from heatjob.runner import WorkerPlan, plan_workers
from heatjob.spec import JobSpec
from heatjob.store import done_flags, open_store
from heatjob.submit import PreparedJob, prepare
from heatjob.worker import UnitWorker, explain_unit

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
        size, itemsize = self.job.spec.dataset.image_size, np.dtype(self.job.spec.store.dtype)
        return self.job.plan.n_rows * self.n_composites * size * size * itemsize.itemsize

    @property
    def metadata_bytes(self) -> int:
        """The small arrays, uncompressed: ids, sizes, labels, logits, boxes, rows, units."""
        a, n = self.job.arrays, len(self.job.sample_ids)
        ids = sum(len(i) + 4 for i in self.job.sample_ids)
        per_sample = 8 + a["labels"].shape[1] * 5  # size, labels, float32 logits
        boxes = len(a["boxes_sample"]) * (8 + 4 + 16 + 1)
        return ids + n * per_sample + boxes + self.job.plan.n_rows * 12

    @property
    def n_composites(self) -> int:
        return len(self.job.spec.attribution.composites)

    @property
    def start_s(self) -> float:
        local = self.resources_from == "this machine"
        return (RAY_START_SECONDS if local else 1.0) + self.calibration.setup_s

    @property
    def compute_s(self) -> float:
        return self.calibration.seconds_per_row * self.rows_pending / self.workers.workers


def local_resources() -> dict[str, float]:
    """What a local Ray would find: the CPUs this process may use, the visible GPUs."""
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


def cluster_resources(address: str | None) -> tuple[dict[str, float], str]:
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return local_resources(), "this machine"
    import ray

    from heatjob.runner import connect

    attached = ray.is_initialized()
    connect(address)
    try:
        return dict(ray.cluster_resources()), f"the cluster at {address}"
    finally:
        if not attached:
            ray.shutdown()


def _store_state(spec: JobSpec, job: PreparedJob) -> tuple[str, list]:
    location = Location(spec.store.path, spec.store.storage_options)
    location.check_container()
    units = list(job.plan.units)
    if location.is_file() or not location.names():
        return "new", units
    try:
        root, _ = open_store(spec.store.path, storage_options=spec.store.storage_options)
    except HeatjobError:
        return "exists and is not a heatjob store: submit refuses it without --overwrite", units
    done = done_flags(root)
    if len(done) != len(units):
        return "holds another job: submit refuses it without --overwrite", units
    pending = [u for u in units if not done[u.index]]
    return f"resumes: {len(units) - len(pending)} of {len(units)} units done", pending


def calibrate(job: PreparedJob, workers: WorkerPlan) -> Calibration:
    """One batch through a worker built like a Ray actor's, timed; heatmaps to memory only."""
    spec = job.spec
    threads_before = torch.get_num_threads()
    try:
        started = time.perf_counter()
        worker = UnitWorker(spec.to_dict(), "", job.num_classes, workers.threads)
        n = min(spec.run.batch_size, job.plan.n_rows)
        rows = np.unique(np.linspace(0, job.plan.n_rows - 1, n).round().astype(np.int64))
        rows_sample = job.plan.rows_sample[rows]
        samples = sorted(set(rows_sample.tolist()))
        # a one-row pass per composite first: one-time costs (modified weights, kernels)
        # are paid once per worker, not per row
        warm = worker._load(samples[:1])[0].to(worker.device)
        for explainer in worker.explainers.values():
            explainer.explain(warm, torch.zeros(1, dtype=torch.long))
        setup_s = time.perf_counter() - started

        started = time.perf_counter()
        batch, _ = worker._load(samples)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        with torch.no_grad():
            x = batch.to(worker.device)
            logits = worker.model(x)
            _sync(worker.device)
        forward_s = time.perf_counter() - started
        index = {s: i for i, s in enumerate(samples)}
        targets = job.plan.rows_target[rows].astype(np.int64)
        pending = targets == PENDING_TARGET  # predicted:K: the top logit stands in
        top = logits.argmax(1).cpu().numpy()[[index[s] for s in rows_sample.tolist()]]
        targets = np.where(pending, top, targets)
        inputs = {s: x[index[s]] for s in samples}
        maps = {}
        started = time.perf_counter()
        # the worker's own explain path: the rows of a batch of images share a forward pass
        for name, explainer in worker.explainers.items():
            maps[name] = explain_unit(
                explainer, inputs, rows_sample, targets, spec.run.batch_size
            )
        _sync(worker.device)
        explain_s = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads_before)
    return Calibration(
        rows=len(rows),
        samples=len(samples),
        device=str(worker.device),
        threads=workers.threads,
        setup_s=setup_s,
        load_s=load_s,
        forward_s=forward_s,
        explain_s=explain_s,
        bytes_per_row=_stored_bytes_per_row(maps, spec.store.dtype),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stored_bytes_per_row(maps: dict[str, np.ndarray], dtype: str) -> float:
    """Bytes per row and composite as the store would hold them: an in-memory twin array."""
    total, rows = 0, 0
    for values in maps.values():
        n, size, _ = values.shape
        objects: dict = {}
        array = zarr.create_array(
            zarr.storage.MemoryStore(objects),
            shape=values.shape,
            dtype=dtype,
            chunks=(1, size, size),  # as the store: one row per chunk, the rows in one shard
            shards=(n, size, size),
            fill_value=np.nan,
        )
        array[:] = values.astype(dtype)
        total += sum(len(v) for k, v in objects.items() if not k.endswith("zarr.json"))
        rows += n
    return total / rows


def dry_run(spec: JobSpec, address: str | None = None, progress: bool = True) -> DryRun:
    job = prepare(spec, progress=progress)
    state, pending = _store_state(spec, job)
    resources, source = cluster_resources(address)
    workers = plan_workers(
        spec.run.workers, spec.run.device, max(1, len(pending)), spec.run.num_gpus, resources
    )
    return DryRun(
        job=job,
        store_state=state,
        units_pending=len(pending),
        rows_pending=sum(u.n_rows for u in pending),
        workers=workers,
        resources=resources,
        resources_from=source,
        calibration=calibrate(job, workers),
    )


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
            f"{run.n_composites} composites -> {n_units * run.n_composites} heatmap shards",
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
            f"forward {cal.forward_s:.2f} s, LRP x{run.n_composites} {cal.explain_s:.2f} s "
            f"-> {cal.seconds_per_row * 1000:.1f} ms/row; worker set-up {cal.setup_s:.1f} s",
        ),
        (
            "store size",
            f"heatmaps {plan.n_rows} rows x {run.n_composites} x {size}x{size} "
            f"{spec.store.dtype} = {_bytes(run.raw_bytes)} raw, ~{_bytes(run.heatmap_bytes)} "
            f"stored ({cal.bytes_per_row:,.0f} B/row/composite, measured); "
            f"other arrays <= {_bytes(run.metadata_bytes)}",
        ),
        (
            "estimate",
            f"~{_duration(run.start_s + run.compute_s)}: {_duration(run.compute_s)} of "
            f"compute for {run.rows_pending} rows on {w.describe()} + "
            f"{_duration(run.start_s)} start-up",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


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
