"""A unit's records, written by the worker that ran it (store format 2), and the readers
that see them in both formats.

A worker opens the store and its arrays once (`UnitWriter`). Per unit it writes, each into
chunks that only this unit owns: one shard per heatmap array, one chunk of units/logits,
one chunk of rows/target when it chose the targets (predicted:K), and last one chunk of
units/record, the done record. Nothing is read back or rewritten, so a unit costs one
request per heatmap source plus two or three, whatever the size of the job.

Readers (`unit_records`, `sample_logits`, `sample_failures`) take a store of either format:
format 1 (heatjob 0.2.0) kept the same facts in per-unit and per-sample arrays that the
driver wrote (heatjob.store.units.finish_unit).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync

from heatjob.job.plan import Unit
from heatjob.store import schema
from heatjob.store.encode import ChunkEncoder, encoder_for, read_chunks
from heatjob.store.layout import failure_records, owned_starts
from heatjob.store.location import open_group
from heatjob.store.units import unit_checksum

BLOCK_SAMPLES = 4096  # samples read at a time by by_sample_block (the arrays' chunk)


@dataclass(frozen=True)
class Writer:
    """Who wrote a unit: host name, Ray node id, process id."""

    host: str
    node: str
    pid: int


class UnitWriter:
    """A worker's handle on the store, opened once: `write` per unit."""

    def __init__(self, path: str, sources: list[str], storage_options: dict | None = None):
        root = open_group(path, "r+", storage_options)
        self.format = int(root.attrs[schema.ROOT_ATTRIBUTE]["format"])
        self.heatmaps = {name: root[schema.heatmaps(name)] for name in sources}
        # heatjob's codec chains encoded here, a few ms a unit less than zarr's write path
        self.encoders = {name: encoder_for(a) for name, a in self.heatmaps.items()}
        if self.format >= 2:
            self.logits = root[schema.UNIT_LOGITS]
            self.targets = root[schema.ROW_TARGET]
            self.record = root[schema.UNIT_RECORD]
            for name, array in [
                (schema.UNIT_LOGITS, self.logits),
                (schema.ROW_TARGET, self.targets),
                (schema.UNIT_RECORD, self.record),
            ]:
                self.encoders[name] = encoder_for(array)

    @property
    def owns_records(self) -> bool:
        """Format 2: the worker writes the unit's records; format 1: the driver does."""
        return self.format >= 2

    def write_heatmaps(self, unit: Unit, heatmaps: Mapping[str, np.ndarray]) -> int:
        """The unit's whole shard of every source, one PUT each; the checksum of what was
        written, in the stored dtype."""
        written = {}
        for name, values in heatmaps.items():
            array = self.heatmaps[name]
            written[name] = values.astype(array.dtype, copy=False)
            if (encoder := self.encoders[name]) is not None:
                put_encoded(encoder, unit.index, written[name])
            else:
                put_shard(array, unit.index, written[name])
        return unit_checksum(written)

    def write_records(
        self,
        unit: Unit,
        logits: np.ndarray,
        chosen_targets: np.ndarray | None,
        record: dict,
    ) -> None:
        """Format 2: the logits of the samples the unit owns, its chosen targets, and last
        its done record."""
        if len(logits):  # a unit whose rows all belong to an earlier unit's sample owns none
            padded = np.full(self.logits.shape[1:], np.nan, dtype=np.float32)
            padded[: len(logits)] = logits
            self._put(self.logits, schema.UNIT_LOGITS, unit.index, padded[None])
        if chosen_targets is not None:
            self._put_targets(unit, chosen_targets)
        text = json.dumps(record, sort_keys=True)
        self._put(self.record, schema.UNIT_RECORD, unit.index, np.array([text], dtype=object))

    def _put_targets(self, unit: Unit, targets: np.ndarray) -> None:
        """The unit's rows of rows/target: under predicted:K its chunks are the units'
        (heatjob.store.layout), so one whole chunk, padded to full length at the end of
        the array as zarr stores it; through zarr where a store's chunks are not."""
        rows = self.targets.chunks[0]
        encoder = self.encoders[schema.ROW_TARGET]
        whole = len(targets) == rows or unit.row_stop == self.targets.shape[0]
        if encoder is None or unit.row_start != unit.index * rows or not whole:
            self.targets[unit.row_start : unit.row_stop] = targets
            return
        chunk = np.full(rows, self.targets.fill_value, dtype=self.targets.dtype)
        chunk[: len(targets)] = targets
        put_encoded(encoder, unit.index, chunk)

    def _put(self, array: zarr.Array, name: str, index: int, chunk: np.ndarray) -> None:
        """Chunk `index` of a one-chunk-per-unit array, encoded here where heatjob can."""
        if (encoder := self.encoders[name]) is not None:
            put_encoded(encoder, index, chunk)
        else:
            array[index] = chunk[0]


def put_encoded(encoder: ChunkEncoder, index: int, values: np.ndarray) -> None:
    """One object: chunk or shard `index`, encoded by heatjob (heatjob.store.encode)."""
    store, key, data = encoder.array.store_path.store, encoder.key(index), encoder.encode(values)
    if isinstance(store, zarr.storage.LocalStore):  # a file: ~1 ms less than zarr's event loop
        put_file(store.root / key, data)
    elif data is None:  # every value the fill value: zarr stores no object
        sync(store.delete(key))
    else:
        sync(store.set(key, cpu.Buffer.from_bytes(data)))


def put_file(path: Path, data: bytes | None) -> None:
    """A local store's object written whole (a temporary file renamed over it, so a killed
    writer leaves the old object or the new one), or removed when `data` is None."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def put_shard(array: zarr.Array, index: int, values: np.ndarray) -> None:
    """Shard `index` (along the first axis) of a sharded array, written as one object.

    zarr 3.1 reads a shard before writing into it even when the write covers all of it;
    on a retried unit that is a download of the whole shard. So the shard is encoded in an
    in-memory twin of the array (the same metadata, one shard long) and its bytes put at
    the shard's key: the same bytes zarr would write, and no read.
    """
    meta = json.loads(
        array.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    )
    shard_rows = array.shards[0]
    meta["shape"] = [shard_rows, *meta["shape"][1:]]
    objects: dict = {}
    twin_store = zarr.storage.MemoryStore(objects)
    sync(twin_store.set("zarr.json", cpu.Buffer.from_bytes(json.dumps(meta).encode())))
    twin = zarr.open_array(twin_store, mode="r+")
    twin[: len(values)] = values
    key = array.metadata.encode_chunk_key((0,) * values.ndim)
    store, prefix = array.store_path.store, array.store_path.path
    target = f"{prefix}/{array.metadata.encode_chunk_key((index, *(0,) * (values.ndim - 1)))}"
    if key in objects:
        sync(store.set(target, objects[key]))
    else:  # every value the fill value: zarr stores no object
        sync(store.delete(target))


def done_record(
    writer: Writer,
    attempts: int,
    checksum: int,
    failures: Mapping[int, str],
    seconds: float,
    started: float = 0.0,
    compute: float = 0.0,
) -> dict:
    """What units/record holds for a finished unit (docs/store.md). seconds: the unit's
    wall time in its worker, up to this record; started: when it began (seconds since
    the epoch); compute: the part of `seconds` in the model (forward and LRP passes)."""
    return {
        "host": writer.host,
        "node": writer.node,
        "pid": writer.pid,
        "attempts": attempts,
        "checksum": int(checksum),
        "failures": {str(sample): reason for sample, reason in sorted(failures.items())},
        "seconds": round(seconds, 6),
        "started": round(started, 6),
        "compute": round(compute, 6),
    }


def this_process(node: str = "") -> Writer:
    return Writer(socket.gethostname(), node, os.getpid())


def store_format(root: zarr.Group) -> int:
    return int(root.attrs[schema.ROOT_ATTRIBUTE]["format"])


def parsed_records(root: zarr.Group, start: int = 0, stop: int | None = None) -> list[dict | None]:
    """Format 2: the parsed done records of units start .. stop (default: all), None where
    there is none (or it does not decode: a record cut short counts as not written, and
    the unit is redone)."""
    array = root[schema.UNIT_RECORD]
    stop = array.shape[0] if stop is None else stop
    try:  # heatjob's own chunks: one that does not decode reads as ""
        texts = read_chunks(array, start, stop).tolist()
    except Exception:  # another codec chain, through zarr, and one bad chunk: one by one
        texts = []
        for u in range(start, stop):
            try:
                texts.append(str(array[u]))
            except Exception:
                texts.append("")
    out: list[dict | None] = []
    for text in texts:
        try:
            out.append(json.loads(text) if text else None)
        except ValueError:
            out.append(None)
    return out


@dataclass(frozen=True)
class UnitRecords:
    """Every unit's record as arrays (attempts 0 and checksum 0 where there is none)."""

    done: np.ndarray  # (U,) bool
    attempts: np.ndarray  # (U,) int32
    checksum: np.ndarray  # (U,) uint64
    host: list[str]
    node: list[str]
    pid: np.ndarray  # (U,) int64, -1 until done
    failures: dict[int, str]  # sample -> reason: unreadable images and annotations


def unit_records(root: zarr.Group, texts: list[dict | None] | None = None) -> UnitRecords:
    """The unit records of a store of either format (`texts`: format 2's parsed records,
    when the caller has read them already)."""
    n_units = root[schema.UNIT_DONE].shape[0]
    n_samples = root[schema.SAMPLE_ID].shape[0]
    if store_format(root) < 2:
        return _format1_records(root, n_units, n_samples)
    records = parsed_records(root) if texts is None else texts
    done = _done(root, records)
    failures = _annotation_failures(root, n_samples)
    for record in records:
        for sample, reason in (record or {}).get("failures", {}).items():
            failures[int(sample)] = reason
    missing = {"host": "", "node": "", "pid": -1, "attempts": 0, "checksum": 0}
    rows = [record or missing for record in records]
    return UnitRecords(
        done=done,
        attempts=np.array([r["attempts"] for r in rows], dtype=np.int32),
        checksum=np.array([r["checksum"] for r in rows], dtype=np.uint64),
        host=[r["host"] for r in rows],
        node=[r["node"] for r in rows],
        pid=np.array([r["pid"] for r in rows], dtype=np.int64),
        failures=dict(sorted(failures.items())),
    )


def _annotation_failures(root: zarr.Group, n_samples: int) -> dict[int, str]:
    """samples/failed and samples/failure as sample -> reason: in format 1 every failure,
    in format 2 those the driver found while planning (annotations) and, once copied, the
    workers' too (--retry-failed clears the samples it redoes first)."""
    records = failure_records(root, 0, n_samples)
    failed = np.flatnonzero(records[schema.SAMPLE_FAILED])
    return {int(s): str(records[schema.SAMPLE_FAILURE][s]) for s in failed}


def _format1_records(root: zarr.Group, n_units: int, n_samples: int) -> UnitRecords:
    records = failure_records(root, n_units, n_samples)
    has_writer = schema.UNIT_NODE in root  # not in 0.1.0 stores
    return UnitRecords(
        done=root[schema.UNIT_DONE][:],
        attempts=records[schema.UNIT_ATTEMPTS],
        checksum=records[schema.UNIT_CHECKSUM],
        host=root[schema.UNIT_HOST][:].tolist() if has_writer else [""] * n_units,
        node=root[schema.UNIT_NODE][:].tolist() if has_writer else [""] * n_units,
        pid=root[schema.UNIT_PID][:] if has_writer else np.full(n_units, -1, np.int64),
        failures=_annotation_failures(root, n_samples),
    )


COPIED_ATTRIBUTE = "records_copied"  # root attribute: the driver copied the records (format 2)


def done_units(root: zarr.Group) -> np.ndarray:
    """(U,) bool: which units are complete, in a store of either format."""
    if store_format(root) < 2:
        return root[schema.UNIT_DONE][:]
    return _done(root, None)


def _done(root: zarr.Group, records: list[dict | None] | None) -> np.ndarray:
    """Format 2: a unit is done when its record is there; once the driver has copied the
    records into units/done, that array decides, so that clearing a unit's flag there
    (to redo it, as in format 1) still works."""
    flags = root[schema.UNIT_DONE][:]
    if COPIED_ATTRIBUTE in root.attrs:
        return flags
    records = parsed_records(root) if records is None else records
    return flags | np.array([r is not None for r in records], dtype=bool)


def sample_logits(root: zarr.Group, texts: list[dict | None] | None = None) -> np.ndarray:
    """(N, C) float32: every sample's logits (NaN where not computed yet or failed);
    `texts`: format 2's parsed records, when the caller has read them already."""
    n_samples = root[schema.SAMPLE_ID].shape[0]
    return logit_reader(root, texts)(0, n_samples)


def logit_reader(root: zarr.Group, texts: list[dict | None] | None = None):
    """read(a, b) -> (b - a, C) float32: the logits of samples a .. b, as sample_logits."""
    if store_format(root) < 2 or COPIED_ATTRIBUTE in root.attrs:
        return lambda a, b: root[schema.SAMPLE_LOGITS][a:b]
    info = root.attrs[schema.ROOT_ATTRIBUTE]
    n_samples = root[schema.SAMPLE_ID].shape[0]
    starts = owned_starts(root[schema.ROW_SAMPLE][:], int(info["shard_size"]), n_samples)
    records = parsed_records(root) if texts is None else texts
    recorded = np.array([r is not None for r in records], dtype=bool)

    def read(a: int, b: int) -> np.ndarray:
        first, last = owning_units(starts, a, b)
        return owned_logits(root, a, b, first, starts[first : last + 1], recorded[first:last])

    return read


def owning_units(starts: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """Units first .. last own samples a .. b, where unit u owns starts[u] .. starts[u + 1]:
    those with starts[u] < b and starts[u + 1] > a."""
    first = int(np.searchsorted(starts[1:], a, side="right"))
    return first, int(np.searchsorted(starts[:-1], b, side="left"))


def by_sample_block(read, n_samples: int, sample: np.ndarray, block: int | None = None):
    """For each block a .. b of `block` samples that holds some of `sample`: (positions,
    values, a), values = read(a, b) and positions the entries of `sample` in the block, at
    values[sample[positions] - a]. One block read at a time, never all N samples."""
    block = block or BLOCK_SAMPLES
    order = np.argsort(sample, kind="stable")
    ordered = sample[order]
    for a in range(0, n_samples, block):
        lo, hi = np.searchsorted(ordered, [a, a + block])
        if lo < hi:
            yield order[lo:hi], read(a, min(a + block, n_samples)), a


def owned_logits(
    root: zarr.Group, a: int, b: int, first_unit: int, starts: np.ndarray, recorded: np.ndarray
) -> np.ndarray:
    """(b - a, C) float32: the logits of samples a .. b, from the units/logits chunks of
    the units with a record among units first_unit .. first_unit + len(recorded), which
    own samples starts[i] .. starts[i + 1]. Units without a record but flagged done in
    units/done (format 1's, or redone ones before a copy): samples/logits holds theirs."""
    out = root[schema.SAMPLE_LOGITS][a:b].astype(np.float32)
    if not recorded.any():
        return out
    per_unit = read_chunks(root[schema.UNIT_LOGITS], first_unit, first_unit + len(recorded))
    for i in np.flatnonzero(recorded):
        first, end = int(starts[i]), int(starts[i + 1])
        lo, hi = max(first, a), min(end, b)
        out[lo - a : hi - a] = per_unit[i, lo - first : hi - first]
    return out


def sample_failures(root: zarr.Group) -> np.ndarray:
    """(N,) bool: the samples whose image or annotation could not be read."""
    failed = np.zeros(root[schema.SAMPLE_ID].shape[0], dtype=bool)
    failed[list(unit_records(root).failures)] = True
    return failed


def clear_failures(root: zarr.Group, samples: tuple[int, ...]) -> None:
    """--retry-failed: the failure records of samples about to be redone (their unit's
    new record, or in format 1 finish_unit, marks them again if they still fail)."""
    for sample in samples:
        root[schema.SAMPLE_FAILED][sample] = False
        root[schema.SAMPLE_FAILURE][sample] = ""
