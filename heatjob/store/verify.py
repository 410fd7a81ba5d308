"""`heatjob status --verify`: recompute each done unit's checksum against its record."""

from __future__ import annotations

import zarr

from heatjob.store import schema
from heatjob.store.layout import StoreInfo
from heatjob.store.records import UnitRecords, unit_records
from heatjob.store.units import store_units, unit_checksum


def verify_units(
    root: zarr.Group, info: StoreInfo, records: UnitRecords | None = None
) -> list[tuple[int, str]]:
    """Recompute the checksum of every done unit that has one (attempts > 0; a store from
    before checksums has none); (unit, problem) for each that does not match."""
    units = store_units(root, info)
    records = records or unit_records(root)
    checksums, attempts, done = records.checksum, records.attempts, records.done
    arrays = {c: root[schema.heatmaps(c)] for c in info.composites}
    problems = []
    for unit in units:
        if not done[unit.index] or not attempts[unit.index]:
            continue
        try:
            maps = {c: a[unit.row_start : unit.row_stop] for c, a in arrays.items()}
        except Exception as exc:  # a corrupt shard may not even decode
            problems.append((unit.index, f"unreadable: {' '.join(str(exc).split())}"))
            continue
        if unit_checksum(maps) != int(checksums[unit.index]):
            problems.append((unit.index, "checksum mismatch"))
    return problems
