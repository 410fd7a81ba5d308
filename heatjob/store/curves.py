"""The perturbation curves of a store: create, write one unit, read, resume.

`curves/<method>/<order>` (rows, steps + 1) float32, one chunk per unit, so a worker
writes its unit's curves in one call per array and no two writers share a chunk;
`curves/done` (units,) bool, one chunk per unit, set by the writer after its curves.
The settings they were made with are the root attribute `faithfulness`.
"""

from __future__ import annotations

import numpy as np
import zarr

from heatjob.job.plan import Unit
from heatjob.store import schema
from heatjob.store.location import open_group


def create_curves(
    root: zarr.Group,
    sources: list[str] | tuple[str, ...],
    n_rows: int,
    shard_size: int,
    n_units: int,
    settings: dict,
) -> None:
    """Empty curve arrays (NaN) and done flags for every source and order; replaces any."""
    steps = int(settings["steps"])
    for source in sources:
        for order in settings["order"]:
            root.create_array(
                schema.curve(source, order),
                shape=(n_rows, steps + 1),
                dtype="float32",
                chunks=(max(1, min(shard_size, n_rows)), steps + 1),
                dimension_names=schema.CURVE_DIMENSIONS,
                fill_value=np.nan,
                overwrite=True,
            )
    root.create_array(
        schema.CURVES_DONE,
        shape=(n_units,),
        dtype="bool",
        chunks=(1,),
        dimension_names=schema.DIMENSIONS[schema.CURVES_DONE],
        fill_value=False,
        overwrite=True,
    )
    root.attrs[schema.FAITHFULNESS_ATTRIBUTE] = dict(settings)


def curve_settings(root: zarr.Group) -> dict:
    """The settings the store's curves were made with; {} when it has none."""
    settings = root.attrs.get(schema.FAITHFULNESS_ATTRIBUTE) or {}
    return dict(settings) if schema.CURVES_DONE in root else {}


def curves_done(root: zarr.Group) -> np.ndarray:
    return root[schema.CURVES_DONE][:]


def write_unit_curves(
    path: str,
    unit: Unit,
    curves: dict[str, dict[str, np.ndarray]],
    storage_options: dict | None = None,
) -> None:
    """A worker's write: the unit's rows of every curve array, then its done flag."""
    root = open_group(path, "r+", storage_options)
    for source, by_order in curves.items():
        for order, values in by_order.items():
            root[schema.curve(source, order)][unit.row_start : unit.row_stop] = values
    root[schema.CURVES_DONE][unit.index] = True


def read_curves(root: zarr.Group, source: str, order: str) -> np.ndarray:
    return root[schema.curve(source, order)][:]
