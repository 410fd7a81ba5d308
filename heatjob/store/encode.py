"""The bytes of one chunk or shard of the arrays a worker writes per unit, encoded here
instead of through zarr's write path.

For a 4-row unit, zarr's write machinery (selection, codec pipeline, event loop) costs a
few milliseconds per array, more than the encoding itself. The layouts heatjob creates use
a handful of codec chains (docs/store.md); for exactly those, the bytes are made here with
the same codecs zarr uses (numcodecs' Zstd and VLenUTF8, google-crc32c) and put as one
object. Any other chain (a store made by another tool or a later heatjob) returns None, and
the caller goes through zarr. `tests/test_encode.py` checks the bytes equal zarr's own.
"""

from __future__ import annotations

import json
from functools import lru_cache

import google_crc32c
import numpy as np
import zarr
from numcodecs import VLenUTF8, Zstd
from zarr.core.buffer import default_buffer_prototype

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
