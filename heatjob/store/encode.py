"""The bytes of one chunk or shard of the arrays a worker writes per unit, encoded here
instead of through zarr's write path, and the one-chunk-per-unit records read back whole.

For a 4-row unit, zarr's write machinery (selection, codec pipeline, event loop) costs a
few milliseconds per array, more than the encoding itself. The layouts heatjob creates use
a handful of codec chains (docs/store.md); for exactly those, the bytes are made here with
the same codecs zarr uses (numcodecs' Zstd and VLenUTF8, google-crc32c) and put as one
object. Any other chain (a store made by another tool or a later heatjob) returns None, and
the caller goes through zarr. `tests/test_encode.py` checks the bytes equal zarr's own.

Reading is the same in reverse, for the arrays of one small chunk per unit (units/record,
units/logits), which the copy, `status` and merge read whole: zarr's read path costs
about 1 ms per chunk, more than the object; `read_chunks` gets them all at once and
decodes them here.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache

import google_crc32c
import numpy as np
import zarr
from numcodecs import VLenUTF8, Zstd
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

EMPTY = 2**64 - 1  # a shard index entry for a chunk not stored
_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}


def _metadata(array: zarr.Array) -> dict:
    raw = array.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    return json.loads(raw)


def _zstd_level(codec: dict) -> int | None:
    """The level of a checksum-free zstd codec, else None."""
    config = codec.get("configuration", {})
    if codec.get("name") != "zstd" or config.get("checksum", False):
        return None
    return int(config.get("level", 0))


@lru_cache(maxsize=64)
def _zstd(level: int) -> Zstd:
    return Zstd(level=level)


class ChunkEncoder:
    """Encodes whole chunks (or, for a sharded array, whole shards) of one array, or says
    it cannot (`encoder_for` returns None)."""

    def __init__(self, array: zarr.Array, kind: str, level: int):
        self.array, self.kind, self.zstd = array, kind, _zstd(level)
        self.dtype = np.dtype(array.dtype) if kind != "string" else None
        self.fill = array.fill_value

    def key(self, index: int) -> str:
        """The store key of chunk (or shard) `index` along the first axis."""
        coords = (index, *(0,) * (self.array.ndim - 1))
        return f"{self.array.store_path.path}/{self.array.metadata.encode_chunk_key(coords)}"

    def encode(self, values: np.ndarray) -> bytes | None:
        """The object's bytes for `values`, a whole chunk (a shard: its first rows, the rest
        left empty); None where zarr would store nothing (every value the fill value)."""
        if self.kind == "string":
            return self._plain(VLenUTF8().encode(np.asarray(values, dtype=object).ravel()))
        if self.kind == "plain":
            if self._is_fill(values):
                return None
            return self._plain(np.ascontiguousarray(values, self.dtype.newbyteorder("<")))
        return self._shard(values)

    def decode(self, data: bytes | None) -> np.ndarray:
        """One whole chunk of a plain or string array from its object's bytes (None: no
        object, the fill value)."""
        shape = self.array.chunks
        if self.kind == "string":
            if data is None:
                return np.full(shape, self.fill, dtype=object)
            return VLenUTF8().decode(self.zstd.decode(data)).reshape(shape)
        if data is None:
            return np.full(shape, self.fill, dtype=self.dtype)
        raw = np.frombuffer(self.zstd.decode(data), dtype=self.dtype.newbyteorder("<"))
        return raw.reshape(shape).astype(self.dtype, copy=False)

    def _plain(self, data) -> bytes:
        return bytes(self.zstd.encode(data))

    def _is_fill(self, values: np.ndarray) -> bool:
        if isinstance(self.fill, np.floating | float) and np.isnan(self.fill):
            return bool(np.isnan(values).all())
        return bool((values == self.fill).all())

    def _shard(self, values: np.ndarray) -> bytes | None:
        """Inner chunks of one row each, in order, and the index (offset, length per chunk,
        EMPTY for a chunk of fill values) with its crc32c, at the end."""
        shard_rows = self.array.shards[0]
        index = np.full((shard_rows, *(1,) * (values.ndim - 1), 2), EMPTY, dtype="<u8")
        parts, offset = [], 0
        rows = np.ascontiguousarray(values, self.dtype.newbyteorder("<"))
        for r in range(len(rows)):
            if self._is_fill(rows[r]):
                continue
            part = self._plain(rows[r])
            index.reshape(shard_rows, 2)[r] = (offset, len(part))
            parts.append(part)
            offset += len(part)
        if not parts:
            return None
        index_bytes = index.tobytes()
        crc = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
        return b"".join(parts) + index_bytes + crc


def encoder_for(array: zarr.Array) -> ChunkEncoder | None:
    """An encoder for one of heatjob's codec chains: a sharded array of one-row inner
    chunks [bytes, zstd] with index [bytes, crc32c] at the end; a plain array [bytes,
    zstd]; a string array [vlen-utf8, zstd]. None for anything else."""
    codecs = _metadata(array)["codecs"]
    if (
        len(codecs) == 2
        and codecs[0] == _BYTES_LE
        and (level := _zstd_level(codecs[1])) is not None
    ):
        return ChunkEncoder(array, "plain", level)
    if len(codecs) == 2 and codecs[0].get("name") == "vlen-utf8":
        level = _zstd_level(codecs[1])
        return None if level is None else ChunkEncoder(array, "string", level)
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    config = codecs[0]["configuration"]
    inner = tuple(config["chunk_shape"])
    one_row = inner[0] == 1 and list(inner[1:]) == list(array.shape[1:])
    chain = config["codecs"]
    index_ok = config["index_codecs"] == [_BYTES_LE, {"name": "crc32c"}]
    if not (one_row and index_ok and config.get("index_location", "end") == "end"):
        return None
    if len(chain) != 2 or chain[0] != _BYTES_LE or (level := _zstd_level(chain[1])) is None:
        return None
    return ChunkEncoder(array, "shard", level)


def read_chunks(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Entries start .. stop of an array of one entry per chunk along the first axis
    (units/record, units/logits), their objects fetched at once and decoded here; through
    zarr for a codec chain heatjob does not make. A chunk that does not decode (an object
    cut short) is the fill value, as if it had not been written."""
    encoder = encoder_for(array)
    if encoder is None or encoder.kind == "shard" or array.chunks[0] != 1:
        return array[start:stop]
    data = _objects(array, [encoder.key(i) for i in range(start, stop)])
    shape = (stop - start, *array.chunks[1:])
    out = np.empty(shape, dtype=object if encoder.kind == "string" else encoder.dtype)
    for i, blob in enumerate(data):
        try:
            out[i] = encoder.decode(blob)[0]
        except Exception:  # whatever does not decode reads as never written
            out[i] = encoder.decode(None)[0]
    return out


def _objects(array: zarr.Array, keys: list[str]) -> list[bytes | None]:
    """The objects at `keys` of the array's store, None where there is none."""
    store = array.store_path.store
    if isinstance(store, zarr.storage.LocalStore):  # plain file reads, no event loop
        out: list[bytes | None] = []
        for key in keys:
            try:
                out.append((store.root / key).read_bytes())
            except FileNotFoundError:
                out.append(None)
        return out
    prototype = default_buffer_prototype()

    async def fetch() -> list:
        limit = asyncio.Semaphore(int(zarr.config.get("async.concurrency") or 10))

        async def get(key: str):
            async with limit:
                return await store.get(key, prototype)

        return await asyncio.gather(*(get(key) for key in keys))

    return [None if buffer is None else buffer.to_bytes() for buffer in sync(fetch())]
