"""`heatjob status`: how far a job has come, read from its store's unit and sample records."""

from __future__ import annotations

import numpy as np

from heatjob.store import schema
from heatjob.store.layout import open_store
from heatjob.store.records import unit_records
from heatjob.store.units import store_units
from heatjob.store.verify import verify_units


def job_status(path: str, verify: bool = False) -> dict:
    """The status report as plain data (what `status --json` prints).

    verify: recompute every done unit's checksum; mismatches go under "verify".
    """
    root, info = open_store(path)
    units = store_units(root, info)
    records = unit_records(root)
    done, attempts = records.done, records.attempts
    failed = list(records.failures)
    ids = root[schema.SAMPLE_ID][:] if len(failed) else []
    reasons = records.failures
    report = {
        "store": path,
        "units_done": int(done.sum()),
        "units_total": len(units),
        "rows_done": sum(u.n_rows for u in units if done[u.index]),
        "rows_total": sum(u.n_rows for u in units),
        "composites": {c: {"units_done": int(done.sum())} for c in info.composites},
        "merged": "metrics" in root.attrs,
        # boxes that [dataset] resize = "crop" cut away (not in stores made before the key)
        "boxes_cropped_away": int(info.attrs.get("boxes_cropped_away", 0)),
        "retried_units": {int(u): int(attempts[u]) for u in np.flatnonzero(attempts > 1)},
        "failures": [
            {"sample": int(s), "id": str(ids[s]), "reason": str(reasons[s])} for s in failed
        ],
    }
    if schema.UNIT_NODE in root:  # which workers wrote the finished units (not in 0.1.0 stores)
        writers = set(zip(records.node, records.pid.tolist(), strict=True))
        writers.discard(("", -1))
        report["writers"] = {
            "nodes": len({node for node, _ in writers}),
            "processes": len(writers),
        }
    if verify:
        problems = verify_units(root, info, records)
        report["verify"] = {
            "units_checked": int((done & (attempts > 0)).sum()),
            "units_without_checksum": int((done & (attempts == 0)).sum()),
            "mismatches": [{"unit": u, "problem": p} for u, p in problems],
        }
    return report
