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
from heatjob.store.layout import StoreInfo, open_store
from heatjob.store.location import Location
from heatjob.store.units import done_flags, row_samples


@dataclass(frozen=True)
class StoreState:
    location: Location
    pending: tuple[Unit, ...]  # the units still to run
    root: Any = None  # the open store group when resuming
    replaces: bool = False  # --overwrite: something is there and will be deleted

    @property
    def resuming(self) -> bool:
        return self.root is not None

    def describe(self, n_units: int) -> str:
        if self.resuming:
            return f"resumes: {n_units - len(self.pending)} of {n_units} units done"
        return "overwrite: the store there is deleted first" if self.replaces else "new"


def store_state(job: PreparedJob, overwrite: bool = False, mode: str = "r") -> StoreState:
    """The state of the job's store; a store that submit must not touch is refused here
    (HeatjobError naming why). Reads only: --overwrite's delete is the caller's.

    mode: "r+" to get the resumed store open for writing.
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
    done = done_flags(root)
    return StoreState(location, tuple(u for u in units if not done[u.index]), root)


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
