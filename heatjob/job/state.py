"""Where a job's store stands before any unit runs: new, to be overwritten, resumable with
the units still to do, or refused. One copy, for `submit` and `submit --dry-run`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from heatjob.errors import HeatjobError
from heatjob.job.plan import Unit
from heatjob.job.prepare import PreparedJob
from heatjob.spec import parse_spec
from heatjob.store import schema
from heatjob.store.layout import StoreInfo, open_store, owned_starts
from heatjob.store.location import Location
from heatjob.store.records import unit_records
from heatjob.store.units import row_samples


@dataclass(frozen=True)
class StoreState:
    location: Location
    pending: tuple[Unit, ...]  # the units still to run
    root: Any = None  # the open store group when resuming
    replaces: bool = False  # --overwrite: something is there and will be deleted
    retried_samples: tuple[int, ...] = ()  # --retry-failed: the failed samples redone

    @property
    def resuming(self) -> bool:
        return self.root is not None

    def describe(self, n_units: int) -> str:
        if self.resuming:
            return f"resumes: {n_units - len(self.pending)} of {n_units} units done"
        return "overwrite: the store there is deleted first" if self.replaces else "new"


def store_state(
    job: PreparedJob, overwrite: bool = False, mode: str = "r", retry_failed: bool = False
) -> StoreState:
    """The state of the job's store; a store that submit must not touch is refused here
    (HeatjobError naming why). Reads only: --overwrite's delete is the caller's.

    mode: "r+" to get the resumed store open for writing.
    retry_failed: also redo the done units that hold a sample whose image failed.
    """
    path, options = job.spec.store.path, job.spec.store.storage_options
    location = Location(path, options)
    location.check_container()
    if location.is_file():
        raise HeatjobError(f"store path {path} is a file, not a Zarr store")
    units = tuple(job.plan.units)
    if overwrite:
        refuse_overwrite(location)
        return StoreState(location, units, replaces=bool(location.names()))
    if not location.names():
        return StoreState(location, units)
    try:
        root, info = open_store(path, mode=mode, storage_options=options)
    except HeatjobError as exc:
        raise HeatjobError(f"{path} is not a heatjob store; not touching it ({exc})") from None
    check_same_job(job, root, info)
    records = unit_records(root)
    redo = ~records.done
    retried: tuple[int, ...] = ()
    if retry_failed:
        retried = tuple(s for s in records.failures if s not in job.failures)
        redo[units_holding(job, retried)] = True
    return StoreState(location, tuple(u for u in units if redo[u.index]), root, False, retried)


def units_holding(job: PreparedJob, samples: tuple[int, ...]) -> np.ndarray:
    """The units that explain a row of, or report the logits of, any of `samples`."""
    plan = job.plan
    wanted = np.zeros(len(job.sample_ids), dtype=bool)
    wanted[list(samples)] = True
    by_row = np.flatnonzero(wanted[plan.rows_sample]) // plan.shard_size
    starts = owned_starts(plan.rows_sample, plan.shard_size, len(job.sample_ids))
    by_logits = np.searchsorted(starts, np.asarray(samples, dtype=np.int64), side="right") - 1
    found = np.union1d(by_row, by_logits).astype(np.int64)
    return found[(found >= 0) & (found < len(plan.units))]


def refuse_overwrite(location: Location) -> None:
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
    if not ("zarr.json" in names and names <= {"zarr.json", *schema.GROUPS}):
        raise HeatjobError(
            f"--overwrite refused: {location.path} is not a heatjob store; not touching it"
        )


def check_same_job(job: PreparedJob, root: Any, info: StoreInfo) -> None:
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
    if not np.array_equal(row_samples(root), job.plan.rows_sample):
        raise HeatjobError(
            f"store {path} holds other rows than this spec plans (has the data set changed?); "
            "use --overwrite to start over"
        )
    if stored.get("checkpoint_sha256", "") != job.checkpoint_sha256:
        raise HeatjobError(
            f"store {path} was made with a different checkpoint file (sha256 differs); "
            "use --overwrite to start over"
        )
