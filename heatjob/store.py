"""The Zarr v3 store of docs/contract.md: create it, write one unit, read it back.

Who writes what, so that no two processes ever write into one chunk or shard:
- the driver creates every array and writes what the plan knows (samples,
  boxes, rows) before any worker starts;
- a worker writes the heatmaps of its unit: exactly one shard per composite,
  in one call per composite;
- the driver, as each unit's result comes back, writes the unit's logits and
  chosen targets and then, last, the unit's done flag. A unit without its flag
  is redone in full on resume, which rewrites the same shards.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

import heatjob
from heatjob.errors import HeatjobError
from heatjob.location import open_group, redact
from heatjob.plan import Plan, Unit, split_units

STORE_FORMAT = 1  # bumped when the layout changes incompatibly
_BLOCK = 4096  # chunk length of the small 1-D/2-D arrays the driver writes


@dataclass(frozen=True)
class StoreInfo:
    """What the root attributes say about a store."""

    path: str
    attrs: dict[str, Any]

    @property
    def composites(self) -> list[str]:
        return list(self.attrs["spec"]["attribution"]["composites"])

    @property
    def shard_size(self) -> int:
        return int(self.attrs["shard_size"])

    @property
    def image_size(self) -> int:
        return int(self.attrs["spec"]["dataset"]["image_size"])

    @property
    def has_boxes(self) -> bool:
        return bool(self.attrs["has_boxes"])


def provenance(
    spec_dict: dict,
    classes: Sequence[str],
    checkpoint_sha256: str,
    shard_size: int,
    has_boxes: bool,
    n_units: int,
) -> dict[str, Any]:
    """The `heatjob` root attribute: how this store's heatmaps were made."""
    # imported here: readers of a store (merge, status, open_store) need no torch
    import torch
    import torchvision

    return {
        "format": STORE_FORMAT,
        "version": heatjob.__version__,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "spec": _without_secrets(spec_dict),
        "checkpoint_sha256": checkpoint_sha256,
        "classes": list(classes),
        "has_boxes": has_boxes,
        "shard_size": shard_size,
        "n_units": n_units,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _without_secrets(spec_dict: dict) -> dict:
    store = spec_dict.get("store", {})
    if not store.get("storage_options"):
        return spec_dict
    return {**spec_dict, "store": {**store, "storage_options": redact(store["storage_options"])}}


def create_store(
    path: str,
    attrs: dict[str, Any],
    plan: Plan,
    sample_ids: Sequence[str],
    sample_sizes: np.ndarray,
    sample_labels: np.ndarray,
    boxes_sample: np.ndarray,
    boxes_class: np.ndarray,
    boxes_xyxy: np.ndarray,
    boxes_difficult: np.ndarray,
    composites: Sequence[str],
    image_size: int,
    dtype: str,
    storage_options: dict | None = None,
    sample_failures: Mapping[int, str] | None = None,
) -> zarr.Group:
    """Create (overwriting) the whole layout and write what the plan knows.

    `sample_failures`: samples whose annotations could not be read (index -> reason).
    """
    root = open_group(path, "w", storage_options)
    n_samples, n_classes = sample_labels.shape

    # variable-length UTF-8: the string type Zarr v3 specifies
    _small_array(root, "samples/id", np.asarray(sample_ids, dtype=object), ("sample",), dtype=str)
    _small_array(root, "samples/size", np.asarray(sample_sizes, dtype=np.int32), ("sample", "hw"))
    _small_array(root, "samples/labels", np.asarray(sample_labels, dtype=bool), ("sample", "class"))
    root.create_array(
        "samples/logits",
        shape=(n_samples, n_classes),
        dtype="float32",
        chunks=(max(1, min(_BLOCK, n_samples)), n_classes),
        dimension_names=("sample", "class"),
        fill_value=np.nan,
    )
    _small_array(root, "boxes/sample", np.asarray(boxes_sample, dtype=np.int64), ("box",))
    _small_array(root, "boxes/class", np.asarray(boxes_class, dtype=np.int32), ("box",))
    xyxy = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
    _small_array(root, "boxes/xyxy", xyxy, ("box", "xyxy"))
    _small_array(root, "boxes/difficult", np.asarray(boxes_difficult, dtype=bool), ("box",))
    _small_array(root, "rows/sample", plan.rows_sample, ("row",))
    _small_array(root, "rows/target", plan.rows_target, ("row",))
    size = image_size
    for composite in composites:
        root.create_array(
            f"heatmaps/{composite}",
            shape=(plan.n_rows, size, size),
            dtype=dtype,
            chunks=(1, size, size),
            shards=(plan.shard_size, size, size),
            dimension_names=("row", "y", "x"),
            fill_value=np.nan,
        )
    _small_array(root, "units/done", np.zeros(len(plan.units), dtype=bool), ("unit",), fill=False)
    # which worker wrote each unit: host name, Ray node id, process id (ext)
    n_units = len(plan.units)
    no_writer = np.full(n_units, "", dtype=object)
    _small_array(root, "units/host", no_writer, ("unit",), fill="", dtype=str)
    _small_array(root, "units/node", no_writer, ("unit",), fill="", dtype=str)
    _small_array(root, "units/pid", np.full(n_units, -1, dtype=np.int64), ("unit",), fill=-1)
    add_failure_records(root, len(plan.units), n_samples, sample_failures)
    # Written last: a store whose attributes are missing was interrupted while being created.
    root.attrs["heatjob"] = attrs
    return root


def _small_array(
    root: zarr.Group,
    name: str,
    data: np.ndarray,
    dims: tuple[str, ...],
    fill: Any = None,
    dtype: Any = None,
) -> None:
    """One of the small arrays (per sample, box, row or unit), in chunks of _BLOCK entries.

    Values that are all the fill value are not written: their chunks read as it anyway.
    """
    array = root.create_array(
        name,
        shape=data.shape,
        dtype=dtype or data.dtype,
        chunks=(max(1, min(_BLOCK, data.shape[0])),) + data.shape[1:],
        dimension_names=dims,
        fill_value=fill,
    )
    if data.size and (fill is None or not np.all(data == fill)):
        array[...] = data


def _failure_record_arrays(
    n_units: int, n_samples: int, sample_failures: Mapping[int, str] | None = None
) -> dict[str, tuple[np.ndarray, tuple[str, ...], Any, Any]]:
    """name -> (values, dims, fill, dtype) of the records beside the done flags."""
    failed = np.zeros(n_samples, dtype=bool)
    reasons = np.full(n_samples, "", dtype=object)
    for sample, reason in (sample_failures or {}).items():
        failed[sample], reasons[sample] = True, reason
    return {
        "units/attempts": (np.zeros(n_units, dtype=np.int32), ("unit",), 0, "int32"),
        "units/checksum": (np.zeros(n_units, dtype=np.uint64), ("unit",), 0, "uint64"),
        "samples/failed": (failed, ("sample",), False, "bool"),
        "samples/failure": (reasons, ("sample",), "", str),
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
    for name, (data, dims, fill, dtype) in records.items():
        if name not in root:
            _small_array(root, name, data, dims, fill, dtype)


def failure_records(root: zarr.Group, n_units: int, n_samples: int) -> dict[str, np.ndarray]:
    """attempts, checksum, failed, failure: read, or empty ones for an older store."""
    empty = _failure_record_arrays(n_units, n_samples)
    return {name: root[name][:] if name in root else data for name, (data, *_) in empty.items()}


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
    attrs = root.attrs.get("heatjob")
    if not isinstance(attrs, dict) or "spec" not in attrs:
        raise HeatjobError(f"{path} is not a heatjob store (no 'heatjob' root attribute)")
    if attrs.get("format") != STORE_FORMAT:
        raise HeatjobError(
            f"{path} has store format {attrs.get('format')}, this heatjob reads {STORE_FORMAT}"
        )
    return root, StoreInfo(path, dict(attrs))


def store_units(root: zarr.Group, info: StoreInfo) -> tuple[Unit, ...]:
    return split_units(root["rows/sample"][:], info.shard_size)


def done_flags(root: zarr.Group) -> np.ndarray:
    return root["units/done"][:]


def write_unit_heatmaps(
    path: str, unit: Unit, heatmaps: dict[str, np.ndarray], storage_options: dict | None = None
) -> int:
    """A worker's write: the unit's whole shard of every composite, one call each.

    Returns the checksum of what was written (see `unit_checksum`).
    """
    root = open_group(path, "r+", storage_options)
    written = {}
    for composite, values in heatmaps.items():
        array = root[f"heatmaps/{composite}"]
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


def verify_units(root: zarr.Group, info: StoreInfo) -> list[tuple[int, str]]:
    """Recompute the checksum of every done unit that has one (attempts > 0; a store from
    before checksums has none); (unit, problem) for each that does not match."""
    units = store_units(root, info)
    records = failure_records(root, len(units), root["samples/id"].shape[0])
    checksums, attempts = records["units/checksum"], records["units/attempts"]
    done = done_flags(root)
    arrays = {c: root[f"heatmaps/{c}"] for c in info.composites}
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
        root["samples/logits"][logits_samples.start : logits_samples.stop] = logits
    if row_targets is not None:
        root["rows/target"][unit.row_start : unit.row_stop] = row_targets
    if writer is not None and "units/host" in root:  # 0.1.0 stores lack them
        host, node, pid = writer
        root["units/host"][unit.index] = host
        root["units/node"][unit.index] = node
        root["units/pid"][unit.index] = pid
    for sample, reason in sorted((failures or {}).items()):
        root["samples/failed"][sample] = True
        root["samples/failure"][sample] = reason
    root["units/checksum"][unit.index] = np.uint64(checksum)
    root["units/attempts"][unit.index] = attempts
    root["units/done"][unit.index] = True
