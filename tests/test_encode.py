"""heatjob's own encoding of the chunks a worker writes (heatjob.store.encode) gives the
bytes zarr itself writes for the same values, and None where zarr writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from heatjob.store.encode import encoder_for, read_chunks


def stored(array: zarr.Array, key: str) -> bytes | None:
    path = array.store.root / key
    return path.read_bytes() if path.exists() else None


def sharded(root, name, dtype, rows=10, shard=4, size=8):
    return root.create_array(
        name,
        shape=(rows, size, size),
        dtype=dtype,
        chunks=(1, size, size),
        shards=(shard, size, size),
        fill_value=np.nan,
    )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_shards_are_the_bytes_zarr_writes(tmp_path, dtype):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    rng = np.random.default_rng(1)
    cases = {
        0: rng.standard_normal((4, 8, 8)),  # a whole shard
        1: np.where(np.arange(4)[:, None, None] == 2, np.nan, rng.standard_normal((4, 8, 8))),
        2: rng.standard_normal((2, 8, 8)),  # the last shard: 2 of its 4 rows exist
    }
    for index, values in cases.items():
        values = values.astype(dtype)
        ours = sharded(root, f"ours{index}", dtype)
        theirs = sharded(root, f"theirs{index}", dtype)
        theirs[index * 4 : index * 4 + len(values)] = values
        encoder = encoder_for(ours)
        key = encoder.key(index)
        assert stored(theirs, key.replace("ours", "theirs")) == encoder.encode(values)
        assert key == f"ours{index}/c/{index}/0/0"
    nan = sharded(root, "nan", dtype)
    nan[0:4] = np.full((4, 8, 8), np.nan, dtype)
    assert (
        stored(nan, "nan/c/0/0/0") is None
        and encoder_for(nan).encode(np.full((4, 8, 8), np.nan)) is None
    )


def test_plain_and_string_chunks_are_the_bytes_zarr_writes(tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    logits = root.create_array(
        "logits", shape=(3, 5, 6), dtype="float32", chunks=(1, 5, 6), fill_value=np.nan
    )
    values = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    values[3:] = np.nan
    logits[1] = values
    assert stored(logits, "logits/c/1/0/0") == encoder_for(logits).encode(values[None])
    records = root.create_array("record", shape=(3,), dtype=str, chunks=(1,), fill_value="")
    text = '{"host": "h\u00e9", "pid": 1}'
    records[2] = text
    encoder = encoder_for(records)
    assert encoder.key(2) == "record/c/2"
    assert stored(records, "record/c/2") == encoder.encode(np.array([text], dtype=object))


def test_other_codec_chains_are_left_to_zarr(tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    gzip = root.create_array(
        "g", shape=(4, 4), dtype="float32", chunks=(1, 4), compressors=zarr.codecs.GzipCodec()
    )
    assert encoder_for(gzip) is None
    two_rows = root.create_array(
        "t", shape=(8, 4, 4), dtype="float32", chunks=(2, 4, 4), shards=(4, 4, 4)
    )
    assert encoder_for(two_rows) is None


def test_a_units_targets_padded_to_the_last_chunk_are_the_bytes_zarr_writes(tmp_path):
    """rows/target under predicted:K: one chunk per unit; the last unit's chunk is padded
    with the fill value, as zarr stores an edge chunk."""
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    targets = root.create_array("t", shape=(10,), dtype="int32", chunks=(4,), fill_value=-1)
    encoder = encoder_for(targets)
    targets[8:10] = [5, 0]
    padded = np.array([5, 0, -1, -1], dtype=np.int32)
    assert encoder.key(2) == "t/c/2"
    assert stored(targets, "t/c/2") == encoder.encode(padded)
    targets[0:4] = [3, 1, 4, 1]
    assert stored(targets, "t/c/0") == encoder.encode(np.array([3, 1, 4, 1], np.int32))


def test_chunks_read_back_whole_are_what_zarr_reads(tmp_path):
    """read_chunks: one entry per chunk, fetched and decoded by heatjob, equal to zarr's
    own reading, the fill value where no object is, and where one does not decode."""
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    logits = root.create_array(
        "logits", shape=(5, 3, 2), dtype="float32", chunks=(1, 3, 2), fill_value=np.nan
    )
    values = np.random.default_rng(3).standard_normal((5, 3, 2)).astype(np.float32)
    logits[0], logits[1], logits[3] = values[0], values[1], values[3]
    records = root.create_array("record", shape=(5,), dtype=str, chunks=(1,), fill_value="")
    records[1], records[2] = '{"a": "\u00e9"}', "x"
    for array in (logits, records):
        np.testing.assert_array_equal(read_chunks(array, 0, 5), array[:])
        np.testing.assert_array_equal(read_chunks(array, 1, 3), array[1:3])
    cut = tmp_path / "s.zarr" / "record" / "c" / "2"
    cut.write_bytes(cut.read_bytes()[:3])
    assert read_chunks(records, 0, 5).tolist() == ["", '{"a": "\u00e9"}', "", "", ""]
    assert np.isnan(read_chunks(logits, 2, 3)).all()


def test_chunks_read_back_from_another_store_kind_go_through_its_get(tmp_path):
    """The same through a store that is not a folder (here zarr's MemoryStore; S3 in
    tests/test_object_store.py): the objects fetched concurrently by key."""
    root = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    logits = root.create_array(
        "logits", shape=(4, 2, 3), dtype="float32", chunks=(1, 2, 3), fill_value=np.nan
    )
    logits[1:3] = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_array_equal(read_chunks(logits, 0, 4), logits[:])
