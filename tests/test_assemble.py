"""The records of a format 2 store assembled into format 1's arrays, block by block
(heatjob.store.assemble): the result is what the test wrote into the records, whatever
the block length, with units that own samples across block edges."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from factories import synthetic_spec

from heatjob.eval import merge
from heatjob.job.plan import owned_samples
from heatjob.job.prepare import job_from_arrays
from heatjob.store import assemble, records, schema
from heatjob.store.layout import create_store
from heatjob.store.records import COPIED_ATTRIBUTE, UnitWriter, Writer, done_record

N_SAMPLES, N_CLASSES = 23, 5


def written_store(path):
    """A store whose units wrote records by hand: unit 2 wrote none, unit 4 none but is
    flagged in units/done with its logits in samples/logits (as a format 1 unit would be),
    unit 1 and 5 recorded a failed sample. Returns the store and the arrays expected."""
    rng = np.random.default_rng(0)
    labels = rng.random((N_SAMPLES, N_CLASSES)) < 0.4
    labels[np.arange(N_SAMPLES), rng.integers(0, N_CLASSES, N_SAMPLES)] = True
    job = job_from_arrays(synthetic_spec(path, shard=3), labels)
    root = create_store(job)
    plan = job.plan
    writer = UnitWriter(str(path), [])
    logits = np.full((N_SAMPLES, N_CLASSES), np.nan, np.float32)
    failed = np.zeros(N_SAMPLES, bool)
    reasons = np.full(N_SAMPLES, "", dtype=object)
    done = np.zeros(len(plan.units), bool)
    pid = np.full(len(plan.units), -1, np.int64)
    for unit in plan.units:
        owned = owned_samples(unit, plan.rows_sample, N_SAMPLES)
        values = rng.standard_normal((len(owned), N_CLASSES)).astype(np.float32)
        if unit.index == 2:
            continue
        if unit.index == 4:
            root[schema.UNIT_DONE][4] = True
            root[schema.SAMPLE_LOGITS][owned[0] : owned[-1] + 1] = values
        else:
            failures = {int(owned[0]): f"unreadable {unit.index}"} if unit.index in (1, 5) else {}
            for sample, reason in failures.items():
                failed[sample], reasons[sample] = True, reason
            record = done_record(Writer("h", "n", 100 + unit.index), 1, unit.index, failures, 0.1)
            writer.write_records(unit, values, None, record)
            pid[unit.index] = 100 + unit.index
        done[unit.index] = True
        if len(owned):
            logits[owned] = values
    assert plan.units[1].row_stop - plan.units[1].row_start == 3
    return root, {"logits": logits, "failed": failed, "reasons": reasons, "done": done, "pid": pid}


@pytest.mark.parametrize("block", [2, 4, 4096])
def test_assembled_arrays_hold_what_the_records_say(tmp_path, monkeypatch, block):
    root, expected = written_store(tmp_path / "s.zarr")
    rows = root[schema.ROW_SAMPLE][:]
    edges = np.arange(3, len(rows), 3)
    assert (rows[edges - 1] == rows[edges]).any()  # samples split over two units
    monkeypatch.setattr(assemble, "BLOCK", block)
    assemble.write_sample_arrays(root)
    again = zarr.open_group(tmp_path / "s.zarr", mode="r")
    np.testing.assert_array_equal(again[schema.SAMPLE_LOGITS][:], expected["logits"])
    np.testing.assert_array_equal(again[schema.SAMPLE_FAILED][:], expected["failed"])
    assert again[schema.SAMPLE_FAILURE][:].tolist() == expected["reasons"].tolist()
    np.testing.assert_array_equal(again[schema.UNIT_DONE][:], expected["done"])
    np.testing.assert_array_equal(again[schema.UNIT_PID][:], expected["pid"])
    units = len(expected["done"])
    checksum = [u if expected["pid"][u] > 0 else 0 for u in range(units)]
    np.testing.assert_array_equal(again[schema.UNIT_CHECKSUM][:], checksum)
    hosts = again[schema.UNIT_HOST][:].tolist()
    assert hosts == ["h" if expected["pid"][u] > 0 else "" for u in range(units)]
    assert again.attrs[COPIED_ATTRIBUTE] == {"units_done": int(expected["done"].sum())}


@pytest.mark.parametrize("block", [2, 5, 4096])
def test_target_logits_read_a_block_of_samples_at_a_time_are_the_records(
    tmp_path, monkeypatch, block
):
    """merge's scores before the copy: each row's target logit, through the units' records
    one block of samples at a time (rows in any order, samples repeated)."""
    root, expected = written_store(tmp_path / "s.zarr")
    monkeypatch.setattr(records, "BLOCK_SAMPLES", block)
    rng = np.random.default_rng(block)
    sample, target = rng.integers(0, N_SAMPLES, 60), rng.integers(0, N_CLASSES, 60)
    scores = merge._scores(root, sample, target)
    np.testing.assert_array_equal(scores, expected["logits"][sample, target])
    assert np.isnan(scores).any() and not np.isnan(scores).all()  # unit 2 wrote no record
    np.testing.assert_array_equal(records.sample_logits(root), expected["logits"])
