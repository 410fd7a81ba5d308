"""`heatjob submit`: prepare, find the store's state, create or resume it, run the units.

Everything that can be wrong with a spec is found in the driver (heatjob.job.prepare),
before Ray starts or the store is touched.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from heatjob.job.annotations import MapBlocks
from heatjob.job.plan import Unit
from heatjob.job.prepare import prepare
from heatjob.job.runner import (
    WorkerPlan,
    connect,
    map_tasks,
    plan_workers,
    ray_cpus,
    run_units,
    shutdown,
)
from heatjob.job.state import store_state
from heatjob.job.worker import UnitResult
from heatjob.spec import JobSpec, with_overrides
from heatjob.store.assemble import on_ray, write_sample_arrays
from heatjob.store.layout import add_failure_records, create_store
from heatjob.store.location import is_url
from heatjob.store.records import COPIED_ATTRIBUTE, clear_failures, store_format
from heatjob.store.units import finish_unit


@dataclass(frozen=True)
class SubmitSummary:
    store: str
    units_total: int
    units_run: int
    rows: int
    seconds: float
    workers: str


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


def submit(
    spec: JobSpec,
    *,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    retry_failed: bool = False,
) -> SubmitSummary:
    """Run (or resume) a job; returns what was done.

    retry_failed: redo the done units holding samples whose image could not be read.
    """
    started = time.perf_counter()
    ray_session = RaySession(address)
    try:
        return _submit(spec, ray_session, started, overwrite, progress, retry_failed)
    finally:
        ray_session.close()


class RaySession:
    """Ray, connected on first use (a large data set's annotations, then the units) and
    shut down at the end if this process started it."""

    def __init__(self, address: str | None) -> None:
        self.address, self.connected, self.started = address, False, False

    def connect(self) -> None:
        if not self.connected:
            self.started = connect(self.address)
            self.connected = True

    def map_blocks(self) -> MapBlocks:
        self.connect()
        return lambda fn, items, on_result: map_tasks(fn, items, ray_cpus(), on_result=on_result)

    def close(self) -> None:
        if self.started:
            shutdown()


def _submit(
    spec: JobSpec,
    ray_session: RaySession,
    started: float,
    overwrite: bool,
    progress: bool,
    retry_failed: bool,
) -> SubmitSummary:
    job = prepare(spec, progress, overwrite, on_cluster=ray_session.map_blocks)
    # with what prepare resolved: Grad-CAM layers against the model, an automatic shard_size
    spec = job.spec
    path = spec.store.path
    state = store_state(job, overwrite=overwrite, mode="r+", retry_failed=retry_failed)
    if state.replaces:
        state.location.delete()
    units, pending = job.plan.units, list(state.pending)
    if state.resuming:
        add_failure_records(state.root, len(units), len(job.sample_ids), job.failures)
        if state.retried_samples:
            clear_failures(state.root, state.retried_samples)  # their units record them anew
        if not pending and not needs_assembly(state.root):
            return SubmitSummary(path, len(units), 0, 0, time.perf_counter() - started, "none")

    ray_session.connect()  # before a new store, so a wrong address leaves none behind
    workers, rows_todo = None, sum(u.n_rows for u in pending)
    if state.resuming:
        root = state.root
    else:
        if not is_url(path):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        root = create_store(job)
    if pending:
        workers = plan_workers(spec.run.workers, spec.run.device, len(pending), spec.run.num_gpus)
        run_pending(job, root, pending, workers, progress)
    if store_format(root) >= 2:  # every unit is done: their records, in blocks, in tasks
        tasks = workers.workers if workers else ray_cpus()
        write_sample_arrays(root, on_ray(path, spec.store.storage_options, tasks))
    return SubmitSummary(
        path,
        len(units),
        len(pending),
        rows_todo,
        time.perf_counter() - started,
        workers.describe() if workers else "none",
    )


def needs_assembly(root) -> bool:
    """Format 2 whose records are not copied into format 1's arrays yet (a driver killed
    after the last unit, or units just run)."""
    return store_format(root) >= 2 and COPIED_ATTRIBUTE not in root.attrs


def run_pending(job, root, pending: list[Unit], workers: WorkerPlan, progress: bool) -> None:
    """The pending units on `workers`, with a progress bar in rows; for a format 1 store
    the driver writes each unit's records as its result comes back."""
    spec = job.spec
    bar = tqdm(
        total=sum(u.n_rows for u in pending),
        desc=f"heatmaps ({workers.describe()})",
        unit="row",
        disable=not progress,
        file=sys.stderr,
        smoothing=0.1,
    )

    def on_result(result: UnitResult, attempts: int) -> None:
        if not result.recorded:  # format 1: the driver writes the unit's records
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
            spec.store.path,
            job.num_classes,
            len(job.sample_ids),
            job.plan.rows_sample,
            job.plan.rows_target,
            pending,
            workers,
            on_result,
        )
