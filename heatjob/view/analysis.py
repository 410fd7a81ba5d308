"""`heatjob.open_store(path)`: a store as one lazy xarray Dataset, for analysis code.

Everything is opened through heatjob.store.layout (so whatever path or URL it accepts
works here too) and wrapped in dask arrays chunked by shard: nothing big is read
until a computation asks for it.

Dimensions and variables (per-row metrics only after `heatjob merge`):

- ``heatmap`` (composite, row, y, x): the heatmaps, one dask chunk per shard.
- per-row metrics (composite, row): ``pointing_game`` (1 hit, 0 miss),
  ``relevance_mass``, ``relevance_mass_weighted``, ``relevance_rank``, ``pixel_ap``,
  ``other_class_mass``, and ``heatmap_box`` (composite, row, xyxy); nan where a row
  is not scored.
- ``curve`` (composite, order, row, step) where the store has perturbation curves:
  the target logit after k patches were replaced (``attrs["faithfulness"]``, the
  settings); after merge ``aopc_<order>`` (composite, row) beside the metrics.
- row coordinates: ``row_sample``, ``row_target``, ``row_class`` (class name),
  ``row_sample_id``, and after merge ``row_hard``, ``row_box_share``.
- samples (sample, ...): ``sample_id`` (coordinate), ``sample_size``, ``sample_labels``,
  ``sample_logits``, ``sample_failed`` where the store has it.
- boxes (box, ...): ``box_sample``, ``box_class``, ``box_xyxy``, ``box_difficult``.
- attrs: ``heatjob`` (provenance), and after merge ``metrics``, ``baselines``,
  ``intervals``, ``per_class``, ``by_size``.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from heatjob.store import schema
from heatjob.store.curves import curve_settings
from heatjob.store.layout import open_store as _open_group


def _lazy(array, rows: int) -> da.Array:
    """A dask view of a Zarr array, `rows` entries of its first axis per chunk."""
    chunks = (max(1, min(rows, array.shape[0])), *array.shape[1:]) if array.shape[0] else "auto"
    return da.from_zarr(array, chunks=chunks)


def open_store(path: str, storage_options: dict | None = None) -> xr.Dataset:
    """The store at `path` as a lazy xarray Dataset chunked by shard (see module doc).

    `path` may be a URL; storage_options (or the environment) carry its credentials.
    """
    root, info = _open_group(path, mode="r", storage_options=storage_options)
    shard = info.shard_size
    composites = info.composites
    classes = list(info.attrs.get("classes", []))
    rows_sample = root[schema.ROW_SAMPLE][:]
    rows_target = root[schema.ROW_TARGET][:]
    sample_ids = np.array(root[schema.SAMPLE_ID][:].tolist(), dtype=str)
    class_names = np.array(classes or [str(c) for c in range(root[schema.SAMPLE_LABELS].shape[1])])

    data: dict[str, tuple] = {
        "heatmap": (
            ("composite", "row", "y", "x"),
            da.stack([_lazy(root[schema.heatmaps(c)], shard) for c in composites]),
        ),
        "sample_size": (("sample", "hw"), root[schema.SAMPLE_SIZE][:]),
        "sample_labels": (("sample", "class"), root[schema.SAMPLE_LABELS][:]),
        "sample_logits": (("sample", "class"), root[schema.SAMPLE_LOGITS][:]),
        "box_sample": (("box",), root[schema.BOX_SAMPLE][:]),
        "box_class": (("box",), root[schema.BOX_CLASS][:]),
        "box_xyxy": (("box", "xyxy"), root[schema.BOX_XYXY][:]),
        "box_difficult": (("box",), root[schema.BOX_DIFFICULT][:]),
    }
    if schema.SAMPLE_FAILED in root:
        data["sample_failed"] = (("sample",), root[schema.SAMPLE_FAILED][:])
    merged = all(schema.metric(c, schema.ROW_METRICS[0]) in root for c in composites)
    if merged:
        for name in schema.ROW_METRICS:
            data[name] = (
                ("composite", "row"),
                da.stack([_lazy(root[schema.metric(c, name)], shard) for c in composites]),
            )
        data["heatmap_box"] = (
            ("composite", "row", "xyxy"),
            da.stack(
                [_lazy(root[schema.metric(c, schema.HEATMAP_BOX)], shard) for c in composites]
            ),
        )

    settings = curve_settings(root)
    if settings:
        orders = settings["order"]
        data["curve"] = (
            ("composite", "order", "row", "step"),
            da.stack(
                [
                    da.stack([_lazy(root[schema.curve(c, o)], shard) for o in orders])
                    for c in composites
                ]
            ),
        )
        for order in orders:
            name = schema.aopc_metric(order)
            if all(schema.metric(c, name) in root for c in composites):
                data[name] = (
                    ("composite", "row"),
                    da.stack([_lazy(root[schema.metric(c, name)], shard) for c in composites]),
                )
    target_names = np.where(
        rows_target < len(class_names),
        class_names[np.clip(rows_target, 0, len(class_names) - 1)],
        "",
    )
    coords = {
        "composite": composites,
        "row": np.arange(len(rows_sample)),
        "sample": np.arange(len(sample_ids)),
        "class": class_names,
        "xyxy": ["x0", "y0", "x1", "y1"],
        "hw": ["height", "width"],
        "sample_id": (("sample",), sample_ids),
        "row_sample": (("row",), rows_sample),
        "row_target": (("row",), rows_target),
        "row_class": (("row",), target_names),
        "row_sample_id": (("row",), sample_ids[rows_sample]),
    }
    if settings:
        coords["order"] = settings["order"]
        coords["step"] = np.arange(settings["steps"] + 1)
    if merged and schema.ROW_HARD in root:
        coords["row_hard"] = (("row",), root[schema.ROW_HARD][:])
        coords["row_box_share"] = (("row",), root[schema.ROW_BOX_SHARE][:])
    attrs = {"heatjob": dict(info.attrs)}
    for key in schema.MERGE_ATTRIBUTES[1:]:  # all but "merged"
        if key in root.attrs:
            attrs[key] = root.attrs[key]
    if settings:
        attrs[schema.FAITHFULNESS_ATTRIBUTE] = settings
    return xr.Dataset(data, coords=coords, attrs=attrs)
