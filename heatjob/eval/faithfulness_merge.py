"""merge's faithfulness part: AOPC per source and order from a store's curves.

Beside the localisation metrics: `aopc_<order>` in each source's metrics and intervals,
and one value per row in `metrics/<source>/aopc_<order>`. Every row with a finite curve
counts (faithfulness needs no box); rows of failed samples are left out.
"""

from __future__ import annotations

import numpy as np

from heatjob.eval.faithfulness import aopc, aopc_table
from heatjob.store import schema
from heatjob.store.curves import curve_settings, curves_done, read_curves
from heatjob.store.layout import StoreInfo, write_row_array


def score_curves(root, info: StoreInfo, failed: np.ndarray, resamples: int, seed: int, report):
    """Add AOPC to the report's metrics and intervals, write the per-row arrays; a note
    when the store has no curves or not all of them."""
    settings = curve_settings(root)
    if not settings:
        return
    done = curves_done(root)
    if not done.all():
        report.notes.append(
            f"faithfulness skipped: curves of {int((~done).sum())} of {len(done)} units "
            "missing; run `heatjob evaluate` to finish them"
        )
        return
    rows_sample = root[schema.ROW_SAMPLE][:]
    excluded = failed[rows_sample] if len(rows_sample) else np.zeros(0, bool)
    per_row = {}
    for source in info.sources:
        for order in settings["order"]:
            values = aopc(read_curves(root, source, order)).astype(np.float64)
            values[excluded] = np.nan
            per_row[(source, order)] = values
    names = {f"{s}\t{o}": v for (s, o), v in per_row.items()}
    values, intervals = aopc_table(names, rows_sample, len(failed), resamples, seed)
    everything = np.arange(len(rows_sample))
    for (source, order), row_values in per_row.items():
        key, name = schema.aopc_metric(order), f"{source}\t{order}"
        report.metrics.setdefault(source, {})[key] = values[name]
        if name in intervals:
            report.intervals.setdefault(source, {})[key] = intervals[name]
        write_row_array(root, schema.metric(source, key), everything, row_values, np.nan)
    report.faithfulness = {
        **settings,
        "unit": "logit",
        "rows": int(np.isfinite(next(iter(per_row.values()))).sum()) if per_row else 0,
    }
