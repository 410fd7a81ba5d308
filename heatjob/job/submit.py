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

from heatjob.job.prepare import prepare
from heatjob.job.runner import connect, plan_workers, run_units, shutdown
from heatjob.job.state import store_state
from heatjob.job.worker import UnitResult
from heatjob.spec import JobSpec, with_overrides
from heatjob.store.layout import add_failure_records, create_store
from heatjob.store.location import is_url
from heatjob.store.records import clear_failures, store_format, write_sample_arrays
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
    job = prepare(spec, progress=progress, overwrite=overwrite)
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
        if not pending:
            if store_format(state.root) >= 2:  # a driver killed after the last unit
                write_sample_arrays(state.root)
            return SubmitSummary(path, len(units), 0, 0, time.perf_counter() - started, "none")

    started_ray = connect(address)  # first, so a wrong address leaves no new store behind
    try:
        if state.resuming:
            root = state.root
        else:
            if not is_url(path):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            root = create_store(job)
        workers = plan_workers(spec.run.workers, spec.run.device, len(pending), spec.run.num_gpus)
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
            if result.recorded:  # the worker wrote the unit's records (format 2)
                bar.update(result.unit.n_rows)
                return
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
        if store_format(root) >= 2:
            write_sample_arrays(root)  # every unit is done: their records, in blocks
    finally:
        if started_ray:
            shutdown()
    return SubmitSummary(
        path,
        len(units),
        len(pending),
        rows_todo,
        time.perf_counter() - started,
        workers.describe(),
    )
