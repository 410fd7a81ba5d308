"""A unit's records: the worker's heatmap write, the driver's finish, done flags,
failure records (attempts, checksums, failed samples), and the units of a store.

See heatjob.store.layout for who writes what.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import zarr

from heatjob.job.plan import Unit, split_units
from heatjob.store import schema
from heatjob.store.layout import StoreInfo
from heatjob.store.location import open_group


def store_units(root: zarr.Group, info: StoreInfo) -> tuple[Unit, ...]:
    return split_units(root[schema.ROW_SAMPLE][:], info.shard_size)


def done_flags(root: zarr.Group) -> np.ndarray:
    return root[schema.UNIT_DONE][:]


def write_unit_heatmaps(
    path: str, unit: Unit, heatmaps: dict[str, np.ndarray], storage_options: dict | None = None
) -> int:
    """A worker's write: the unit's whole shard of every composite, one call each.

    Returns the checksum of what was written (see `unit_checksum`).
    """
    root = open_group(path, "r+", storage_options)
    written = {}
    for composite, values in heatmaps.items():
        array = root[schema.heatmaps(composite)]
        written[composite] = values.astype(array.dtype, copy=False)
        array[unit.row_start : unit.row_stop] = written[composite]
    return unit_checksum(written)


def unit_checksum(heatmaps: Mapping[str, np.ndarray]) -> int:
    """A 64-bit digest of a unit's heatmaps, composites in name order, in the stored dtype.

    NaNs are hashed as one canonical NaN: a row of NaN (a failed sample) may come back from
    the store as the fill value's bit pattern rather than the one written.
    """
    digest = hashlib.blake2b(digest_size=8)
    for composite in sorted(heatmaps):
        values = np.ascontiguousarray(heatmaps[composite])
        values = np.where(np.isnan(values), np.array(np.nan, dtype=values.dtype), values)
        digest.update(composite.encode())
        digest.update(str(values.shape).encode())
        digest.update(values.tobytes())
    return int.from_bytes(digest.digest(), "little")


def finish_unit(
    root: zarr.Group,
    unit: Unit,
    logits_samples: range,
    logits: np.ndarray,
    row_targets: np.ndarray | None,
    writer: tuple[str, str, int] | None = None,
    checksum: int = 0,
    attempts: int = 1,
    failures: Mapping[int, str] | None = None,
) -> None:
    """The driver's write after a worker reported a unit; the done flag goes last.

    writer: (host, Ray node id, pid) of the worker that wrote the unit's shards.
    `failures`: samples of the unit whose image could not be read (index -> reason).
    """
    if len(logits_samples):
        root[schema.SAMPLE_LOGITS][logits_samples.start : logits_samples.stop] = logits
    if row_targets is not None:
        root[schema.ROW_TARGET][unit.row_start : unit.row_stop] = row_targets
    if writer is not None and schema.UNIT_HOST in root:  # 0.1.0 stores lack them
        host, node, pid = writer
        root[schema.UNIT_HOST][unit.index] = host
        root[schema.UNIT_NODE][unit.index] = node
        root[schema.UNIT_PID][unit.index] = pid
    for sample, reason in sorted((failures or {}).items()):
        root[schema.SAMPLE_FAILED][sample] = True
        root[schema.SAMPLE_FAILURE][sample] = reason
    root[schema.UNIT_CHECKSUM][unit.index] = np.uint64(checksum)
    root[schema.UNIT_ATTEMPTS][unit.index] = attempts
    root[schema.UNIT_DONE][unit.index] = True


def row_samples(root: zarr.Group) -> np.ndarray:
    """rows/sample: which sample each heatmap row explains."""
    return root[schema.ROW_SAMPLE][:]
