"""The Zarr v3 store of docs/store.md: create it from a prepared job, open it.

Who writes what, so that no two processes ever write into one chunk or shard:
- the driver creates every array and writes what the plan knows (samples,
  boxes, rows) before any worker starts (`create_store`);
- a worker writes everything about its unit, each into chunks only that unit
  owns (heatjob.store.records): its heatmap shards, the logits of the samples it
  owns, its chosen targets, and last its done record (writer, attempts, checksum,
  failed samples). A unit without its record is redone in full on resume;
- once every unit is done, the driver copies the records into the per-sample
  and per-unit arrays of format 1 (samples/logits, units/done, ...), in blocks.
Format 1 stores (heatjob 0.2.0), where the driver wrote a unit's records as its
result came back (heatjob.store.units.finish_unit), are still read and resumed.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

import heatjob
from heatjob.errors import HeatjobError
from heatjob.job.plan import PENDING_TARGET, Labels
from heatjob.store import schema
from heatjob.store.curves import create_curves
from heatjob.store.location import Location, open_group, redact

if TYPE_CHECKING:
    from heatjob.job.prepare import PreparedJob

_BLOCK = 4096  # chunk length of the small 1-D/2-D arrays the driver writes
_LABEL_BYTES = 64_000_000  # samples/labels written this much at a time


@dataclass(frozen=True)
class StoreInfo:
    """What the root attributes say about a store."""

    path: str
    attrs: dict[str, Any]

    @property
    def composites(self) -> list[str]:
        """Every heatmap source of the store, composites then methods (the arrays
        heatmaps/<name>); merge, status, render and open_store treat them alike."""
        attribution = self.attrs["spec"]["attribution"]
        return [*attribution.get("composites", []), *attribution.get("methods", {})]

    @property
    def sources(self) -> list[str]:
        return self.composites

    @property
    def format(self) -> int:
        return int(self.attrs["format"])

    @property
    def shard_size(self) -> int:
        return int(self.attrs["shard_size"])

    @property
    def image_size(self) -> int:
        return int(self.attrs["spec"]["dataset"]["image_size"])

    @property
    def has_boxes(self) -> bool:
        return bool(self.attrs["has_boxes"])

    @property
    def classes(self) -> list[str]:
        return list(self.attrs.get("classes", []))


def provenance(job: PreparedJob) -> dict[str, Any]:
    """The `heatjob` root attribute: how this store's heatmaps were made."""
    # imported here: readers of a store (merge, status, open_store) need no torch
    import torch
    import torchvision

    return {
        "format": schema.STORE_FORMAT,
        "version": heatjob.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "spec": _without_secrets(job.spec.to_dict()),
        "checkpoint_sha256": job.checkpoint_sha256,
        "classes": list(job.classes),
        "has_boxes": job.has_boxes,
        "shard_size": job.plan.shard_size,
        "n_units": len(job.plan.units),
        "boxes_cropped_away": job.boxes_cropped_away,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _without_secrets(spec_dict: dict) -> dict:
    store = spec_dict.get("store", {})
    if not store.get("storage_options"):
        return spec_dict
    return {**spec_dict, "store": {**store, "storage_options": redact(store["storage_options"])}}


def create_store(job: PreparedJob, attrs: dict[str, Any] | None = None) -> zarr.Group:
    """Create (overwriting) the whole layout at the job's store path and write what the
    plan knows: samples, boxes, rows, and empty heatmaps and unit records.

    `attrs`: the root attribute (default: `provenance(job)`), written last, so a store
    without it was interrupted while being created.
    """
    spec, plan, a = job.spec, job.plan, job.arrays
    root = open_group(spec.store.path, "w", spec.store.storage_options)
    n_samples, n_classes = job.labels.shape
    # variable-length UTF-8: the string type Zarr v3 specifies
    small_array(root, schema.SAMPLE_ID, np.asarray(job.sample_ids, dtype=str), dtype=str)
    small_array(root, schema.SAMPLE_SIZE, np.asarray(a["sizes"], dtype=np.int32))
    write_labels(root, job.labels)
    root.create_array(
        schema.SAMPLE_LOGITS,
        shape=(n_samples, n_classes),
        dtype="float32",
        chunks=(max(1, min(_BLOCK, n_samples)), n_classes),
        dimension_names=schema.DIMENSIONS[schema.SAMPLE_LOGITS],
        fill_value=np.nan,
    )
    small_array(root, schema.BOX_SAMPLE, np.asarray(a["boxes_sample"], dtype=np.int64))
    small_array(root, schema.BOX_CLASS, np.asarray(a["boxes_class"], dtype=np.int32))
    xyxy = np.asarray(a["boxes_xyxy"], dtype=np.float32).reshape(-1, 4)
    small_array(root, schema.BOX_XYXY, xyxy)
    small_array(root, schema.BOX_DIFFICULT, np.asarray(a["boxes_difficult"], dtype=bool))
    small_array(root, schema.ROW_SAMPLE, plan.rows_sample)
    if spec.attribution.predicted_k:  # the unit's worker writes its own chunk; none here
        small_array(
            root, schema.ROW_TARGET, plan.rows_target, fill=PENDING_TARGET, block=plan.shard_size
        )
    else:  # known now: in blocks, not one object per unit
        small_array(root, schema.ROW_TARGET, plan.rows_target)
    size = spec.dataset.image_size
    for composite in spec.attribution.sources:
        root.create_array(
            schema.heatmaps(composite),
            shape=(plan.n_rows, size, size),
            dtype=spec.store.dtype,
            chunks=(1, size, size),
            shards=(plan.shard_size, size, size),
            dimension_names=schema.HEATMAP_DIMENSIONS,
            fill_value=np.nan,
        )
    n_units = len(plan.units)
    small_array(root, schema.UNIT_DONE, np.zeros(n_units, dtype=bool), fill=False)
    # which worker wrote each unit: host name, Ray node id, process id
    no_writer = np.full(n_units, "", dtype=object)
    small_array(root, schema.UNIT_HOST, no_writer, fill="", dtype=str)
    small_array(root, schema.UNIT_NODE, no_writer, fill="", dtype=str)
    small_array(root, schema.UNIT_PID, np.full(n_units, -1, dtype=np.int64), fill=-1)
    add_failure_records(root, n_units, n_samples, job.failures)
    if spec.evaluation.faithfulness:
        create_curves(
            root,
            spec.attribution.sources,
            plan.n_rows,
            plan.shard_size,
            n_units,
            spec.evaluation.faithfulness,
        )
    add_unit_records(root, plan, n_samples, n_classes)
    root.attrs[schema.ROOT_ATTRIBUTE] = attrs if attrs is not None else provenance(job)
    return root


def write_labels(root: zarr.Group, labels: Labels) -> None:
    """samples/labels from the (sample, class) pairs, about 64 MB of the matrix at a time:
    at 10^7 samples and 1000 classes the whole matrix would be 10 GB."""
    n, c = labels.shape
    array = root.create_array(
        schema.SAMPLE_LABELS,
        shape=(n, c),
        dtype=bool,
        chunks=(max(1, min(_BLOCK, n)), c),
        dimension_names=schema.DIMENSIONS[schema.SAMPLE_LABELS],
    )
    step = _BLOCK * max(1, _LABEL_BYTES // (_BLOCK * max(c, 1)))
    for a in range(0, n, step):
        b = min(a + step, n)
        if (block := labels.dense(a, b)).any():  # all-False chunks read as the fill anyway
            array[a:b] = block


def small_array(
    root: zarr.Group,
    name: str,
    data: np.ndarray,
    fill: Any = None,
    dtype: Any = None,
    block: int = _BLOCK,
) -> None:
    """One of the small arrays (per sample, box, row or unit), in chunks of `block` entries,
    with the schema's dimension names.

    Values that are all the fill value are not written: their chunks read as it anyway.
    """
    array = root.create_array(
        name,
        shape=data.shape,
        dtype=dtype or data.dtype,
        chunks=(max(1, min(block, data.shape[0])),) + data.shape[1:],
        dimension_names=schema.DIMENSIONS[name],
        fill_value=fill,
    )
    if not data.size or (fill is not None and np.all(data == fill)):
        return
    if data.dtype.kind != "U":
        array[...] = data
        return
    for start in range(0, len(data), block):  # strings become Python objects a block at a time
        array[start : start + block] = data[start : start + block].astype(object)


def _failure_record_arrays(
    n_units: int, n_samples: int, sample_failures: Mapping[int, str] | None = None
) -> dict[str, tuple[np.ndarray, Any, Any]]:
    """name -> (values, fill, dtype) of the records beside the done flags."""
    failed = np.zeros(n_samples, dtype=bool)
    reasons = np.full(n_samples, "", dtype=object)
    for sample, reason in (sample_failures or {}).items():
        failed[sample], reasons[sample] = True, reason
    return {
        schema.UNIT_ATTEMPTS: (np.zeros(n_units, dtype=np.int32), 0, "int32"),
        schema.UNIT_CHECKSUM: (np.zeros(n_units, dtype=np.uint64), 0, "uint64"),
        schema.SAMPLE_FAILED: (failed, False, "bool"),
        schema.SAMPLE_FAILURE: (reasons, "", str),
    }


def add_failure_records(
    root: zarr.Group,
    n_units: int,
    n_samples: int,
    sample_failures: Mapping[int, str] | None = None,
) -> None:
    """The arrays beside the done flags, where missing (a store from before they existed
    gets them on resume): per unit the dispatches it took and the checksum of its shards
    (attempts 0 = no record), per sample whether it failed and why."""
    records = _failure_record_arrays(n_units, n_samples, sample_failures)
    for name, (data, fill, dtype) in records.items():
        if name not in root:
            small_array(root, name, data, fill, dtype)


def failure_records(root: zarr.Group, n_units: int, n_samples: int) -> dict[str, np.ndarray]:
    """attempts, checksum, failed, failure: read, or empty ones for an older store."""
    empty = _failure_record_arrays(n_units, n_samples)
    return {name: root[name][:] if name in root else data for name, (data, *_) in empty.items()}


def add_unit_records(root: zarr.Group, plan: Any, n_samples: int, n_classes: int) -> None:
    """Format 2's arrays that a unit's worker writes, one chunk per unit: the logits of the
    samples it owns (plan.owned_samples; padded with NaN to the most any unit owns) and its
    done record (JSON, "" until done)."""
    n_units = len(plan.units)
    owned = owned_counts(plan.rows_sample, plan.shard_size, n_samples)
    root.create_array(
        schema.UNIT_LOGITS,
        shape=(n_units, int(owned.max(initial=1)), n_classes),
        dtype="float32",
        chunks=(1, int(owned.max(initial=1)), n_classes),
        dimension_names=schema.DIMENSIONS[schema.UNIT_LOGITS],
        fill_value=np.nan,
    )
    records = np.full(n_units, "", dtype=object)
    small_array(root, schema.UNIT_RECORD, records, fill="", dtype=str, block=1)


def owned_starts(rows_sample: np.ndarray, shard_size: int, n_samples: int) -> np.ndarray:
    """(U + 1,) the first sample each unit owns, and n_samples: unit u owns samples
    starts[u] .. starts[u + 1] (heatjob.job.plan.owned_samples, for every unit at once)."""
    starts = np.arange(0, len(rows_sample), shard_size)
    first = np.zeros(len(starts), dtype=np.int64)
    first[1:] = rows_sample[starts[1:] - 1] + 1
    return np.append(first, n_samples) if len(starts) else np.zeros(1, np.int64)


def owned_counts(rows_sample: np.ndarray, shard_size: int, n_samples: int) -> np.ndarray:
    return np.diff(owned_starts(rows_sample, shard_size, n_samples))


def open_store(
    path: str, mode: str = "r", storage_options: dict | None = None
) -> tuple[zarr.Group, StoreInfo]:
    """Open a heatjob store (local path or URL); anything else is refused and left untouched.

    For a URL without storage_options, credentials come from the environment.
    """
    try:
        root = open_group(path, mode, storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise HeatjobError(f"no Zarr store at {path}") from None
    except Exception as exc:
        raise HeatjobError(f"cannot open {path} as a Zarr v3 store: {exc}") from None
    attrs = root.attrs.get(schema.ROOT_ATTRIBUTE)
    if not isinstance(attrs, dict) or "spec" not in attrs:
        raise HeatjobError(f"{path} is not a heatjob store (no 'heatjob' root attribute)")
    if attrs.get("format") not in schema.READABLE_FORMATS:
        readable = ", ".join(map(str, schema.READABLE_FORMATS))
        raise HeatjobError(
            f"{path} has store format {attrs.get('format')}, this heatjob reads {readable}"
        )
    return root, StoreInfo(path, dict(attrs))


def stored_shard_size(path: str, storage_options: dict | None = None) -> int:
    """The [run] shard_size of the spec stored in the heatjob store at `path`, read from
    its root attribute alone; 0 where nothing is there, where it is no heatjob store
    (heatjob.job.state says what is wrong with it) or its spec holds no positive one.

    The spec's value, not the root's `shard_size`: that is the effective one, which
    predicted:K and all round up to whole samples."""
    if not Location(path, storage_options).names():
        return 0
    try:
        _, info = open_store(path, storage_options=storage_options)
    except HeatjobError:
        return 0
    spec = info.attrs["spec"]
    run = spec.get("run") if isinstance(spec, dict) else None
    value = run.get("shard_size") if isinstance(run, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stored_bytes_per_row(maps: dict[str, np.ndarray], dtype: str) -> float:
    """Bytes per row and composite as a store would hold these heatmaps: written into an
    in-memory twin of the heatmap arrays (one row per chunk, the rows in one shard), so
    the codec's own output is counted, shard index included."""
    total, rows = 0, 0
    for values in maps.values():
        n, size, _ = values.shape
        objects: dict = {}
        array = zarr.create_array(
            zarr.storage.MemoryStore(objects),
            shape=values.shape,
            dtype=dtype,
            chunks=(1, size, size),
            shards=(n, size, size),
            fill_value=np.nan,
        )
        array[:] = values.astype(dtype)
        total += sum(len(v) for k, v in objects.items() if not k.endswith("zarr.json"))
        rows += n
    return total / rows


def write_row_array(
    root: zarr.Group, name: str, rows: np.ndarray, values: np.ndarray, fill: Any
) -> None:
    """A per-row array written by merge (metrics/<composite>/<metric>, rows/scored ...):
    `values` at store rows `rows`, `fill` elsewhere; replaces an older one. Chunked like
    the heatmaps (one chunk per shard), so xarray lines them up."""
    n = root[schema.ROW_SAMPLE].shape[0]
    shard = int(root.attrs[schema.ROOT_ATTRIBUTE]["shard_size"])
    full = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
    full[rows] = values
    array = root.create_array(
        name,
        shape=full.shape,
        dtype=full.dtype,
        chunks=(max(1, min(shard, n)), *full.shape[1:]),
        dimension_names=("row", *(["xyxy"] if full.ndim == 2 else [])),
        fill_value=fill,
        overwrite=True,
    )
    if n:
        array[...] = full


def consolidate(root: zarr.Group) -> None:
    """Consolidated metadata, once the store is complete (merge): one read opens it."""
    with warnings.catch_warnings():  # zarr notes that consolidation is not in the v3 spec yet
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(root.store)  # the open store: a URL keeps its options
