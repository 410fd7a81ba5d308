"""Workers own their units' records (store format 2), and format 1 stores (heatjob 0.2.0)
still resume, verify and merge.

The format 1 store in tests/data/store-0.2.0.zarr was written by heatjob 0.2.0 itself
(`heatjob submit` of SPEC_020 below, one CPU worker), before this layout existed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from factories import synthetic_spec
from typer.testing import CliRunner

from heatjob.cli import app
from heatjob.eval.merge import merge
from heatjob.job.plan import first_batch, owned_samples
from heatjob.job.prepare import prepare
from heatjob.job.worker import UnitWorker
from heatjob.spec import parse_spec
from heatjob.store import assemble, records
from heatjob.store.layout import create_store

HEATJOB = [sys.executable, "-m", "heatjob.cli"]
REPO = Path(__file__).resolve().parent.parent
STORE_020 = REPO / "tests" / "data" / "store-0.2.0.zarr"
COMPOSITES = ("EpsilonPlusFlat", "cmp-a2b1-flat")
CONTRACT = ("samples/logits", "rows/sample", "rows/target", "samples/failed") + tuple(
    f"heatmaps/{c}" for c in COMPOSITES
)


def spec_020(store: Path) -> dict:
    """The job that made tests/data/store-0.2.0.zarr (predicted:2 targets: the workers
    choose them, so rows/target is a unit's record too). The checkpoint path is the one
    that store's spec holds, relative to the repository (the same-job check compares it)."""
    return {
        "dataset": {"kind": "synthetic", "num_samples": 12, "seed": 3, "image_size": 16},
        "model": {
            "arch": "small_cnn",
            "checkpoint": "models/small_cnn_shapes.pt",
            "num_classes": 6,
        },
        "attribution": {"composites": list(COMPOSITES), "targets": "predicted:2"},
        "store": {"path": str(store), "dtype": "float32"},
        "run": {"batch_size": 4, "shard_size": 4, "workers": 1},
    }


def write_toml(path: Path, spec: dict) -> Path:
    lines = []
    for section, values in spec.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def heatjob(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "RAY_ADDRESS": "", **(env or {})}
    return subprocess.run(
        [*HEATJOB, *args], capture_output=True, text=True, env=full_env, timeout=600, cwd=REPO
    )


class CountingLocalStore:
    """Counts every request heatjob's zarr makes of a local store (get, set, delete,
    exists, list), by key, while installed; and the objects heatjob writes into a local
    store's files itself (records.put_file, counted as a set or a delete)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter = Counter()
        self.keys: list = []
        store = zarr.storage.LocalStore
        for name in ("get", "set", "delete", "exists", "get_partial_values"):
            monkeypatch.setattr(store, name, self._counted(getattr(store, name), name))
        put_file = records.put_file

        def counted_put_file(path, data):
            name = "set" if data is not None else "delete"
            self.calls[name] += 1
            self.keys.append((name, str(path)))
            return put_file(path, data)

        monkeypatch.setattr(records, "put_file", counted_put_file)

    def _counted(self, method, name):
        async def counted(store, *args, **kwargs):
            self.calls[name] += 1
            self.keys.append((name, args[0] if args else ""))
            return await method(store, *args, **kwargs)

        return counted


def test_a_worker_writes_its_units_records_itself_in_a_constant_number_of_requests(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    """UnitWorker on a format 2 store, no Ray: each unit writes its heatmap shards, its
    owned logits, its chosen targets and its done record; nothing else is read or written
    per unit (after the first unit opens the store). The records read back as the logits
    and targets of one explain over all samples, and the driver's copy fills format 1's
    arrays."""
    spec = parse_spec(spec_020(tmp_path / "w.zarr"), source="test")
    job = prepare(spec, progress=False)
    create_store(job)
    worker = UnitWorker(job.spec.to_dict(), spec.store.path, job.num_classes, threads=1)
    plan, n = job.plan, len(job.sample_ids)
    assert len(plan.units) == 6

    counter = CountingLocalStore(monkeypatch)
    per_unit = []
    for unit in plan.units:
        before = Counter(counter.calls)
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, plan.rows_sample, n)
        worker.run_unit(unit, plan.rows_sample[rows], plan.rows_target[rows], owned, 1)
        per_unit.append(counter.calls - before)
    # predicted:2: every unit writes its targets too; sources + logits + targets + record
    for calls in per_unit[1:]:
        assert calls == Counter({"set": len(COMPOSITES) + 3}), counter.keys[-12:]
    assert per_unit[0]["set"] == len(COMPOSITES) + 3
    monkeypatch.undo()

    root = zarr.open_group(spec.store.path, mode="r")
    assert records.done_units(root).all()
    assert not root["units/done"][:].any()  # no driver wrote anything
    # The same batches explained again, unit by unit: CPU kernels round differently at
    # other batch sizes, so one explain over all rows is no bitwise reference.
    expected = np.full((n, job.num_classes), np.nan, dtype=np.float32)
    chosen = []
    for unit in plan.units:
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, plan.rows_sample, n)
        again = worker.explain(plan.rows_sample[rows], plan.rows_target[rows], owned=owned)
        for sample in owned:
            expected[sample] = again.logits[sample]
        chosen.append(again.chosen_targets)
    assert not np.isnan(expected).any()
    np.testing.assert_array_equal(records.sample_logits(root), expected)
    np.testing.assert_array_equal(root["rows/target"][:], np.concatenate(chosen))
    unit_records = records.unit_records(root)
    assert (unit_records.attempts == 1).all() and unit_records.failures == {}
    assert set(unit_records.pid.tolist()) == {os.getpid()}
    record = json.loads(str(root["units/record"][3]))
    assert set(record) == {
        *("host", "node", "pid", "attempts", "checksum", "failures"),
        *("seconds", "started", "compute"),
    }
    assert 0 < record["compute"] <= record["seconds"] and record["started"] > 1.7e9

    writable = zarr.open_group(spec.store.path, mode="r+")
    assemble.write_sample_arrays(writable)
    np.testing.assert_array_equal(writable["samples/logits"][:], expected)
    assert writable["units/done"][:].all()
    np.testing.assert_array_equal(writable["units/checksum"][:], unit_records.checksum)
    report = CliRunner().invoke(app, ["status", spec.store.path, "--verify", "--json"])
    assert json.loads(report.output)["verify"]["mismatches"] == []


def test_a_record_cut_short_counts_as_not_done(tmp_path, monkeypatch):
    """A worker killed while writing its done record leaves a chunk that does not decode:
    that unit is redone, the others stay done."""
    monkeypatch.chdir(REPO)
    job = prepare(parse_spec(spec_020(tmp_path / "cut.zarr"), source="test"), progress=False)
    root = create_store(job)
    root["units/record"][0] = json.dumps(
        {"host": "h", "node": "n", "pid": 1, "attempts": 1, "checksum": 5, "failures": {}}
    )
    root["units/record"][1] = json.dumps(
        {"host": "h", "node": "n", "pid": 1, "attempts": 1, "checksum": 6, "failures": {}}
    )
    chunk = tmp_path / "cut.zarr" / "units" / "record" / "c" / "1"
    chunk.write_bytes(chunk.read_bytes()[:5])
    done = records.done_units(zarr.open_group(tmp_path / "cut.zarr", mode="r"))
    assert done.tolist() == [True] + [False] * 5


@pytest.mark.slow
def test_a_020_store_resumes_verifies_and_merges_like_a_new_one(tmp_path):
    """The store heatjob 0.2.0 wrote: status --verify checks it out; with two units' done
    flags cleared, submit redoes exactly those through 0.2.0's layout (the driver writes
    their records) and the store keeps format 1; its arrays equal a new format 2 run of the
    same job (bit for bit for the redone units, which ran here; to float32 round-off for
    the others, written on another machine), and merge gives the same numbers."""
    old = tmp_path / "old.zarr"
    shutil.copytree(STORE_020, old)
    result = CliRunner().invoke(app, ["status", str(old), "--verify"])
    assert result.exit_code == 0, result.output
    assert "verify: 6/6 done units check out" in result.output

    fresh = tmp_path / "new.zarr"
    run = heatjob("submit", str(write_toml(tmp_path / "new.toml", spec_020(fresh))), "-q")
    assert run.returncode == 0, run.stderr
    new_root = zarr.open_group(fresh, mode="r")
    assert new_root.attrs["heatjob"]["format"] == 2

    root = zarr.open_group(old, mode="r+")
    root["units/done"][2] = False
    root["units/done"][4] = False
    run = heatjob("submit", str(write_toml(tmp_path / "old.toml", spec_020(old))), "-q")
    assert run.returncode == 0, run.stderr
    assert ": 2 of 6 units written" in run.stdout
    root = zarr.open_group(old, mode="r")
    assert root.attrs["heatjob"]["format"] == 1 and "units/record" not in root
    assert root["units/done"][:].all()
    assert root["units/attempts"][:].tolist() == [1] * 6
    pristine = zarr.open_group(STORE_020, mode="r")
    redone = np.zeros(root["rows/sample"].shape[0], dtype=bool)
    redone[8:12] = redone[16:20] = True  # units 2 and 4: shards of 4 rows
    for name in CONTRACT:
        got, new = root[name][:], new_root[name][:]
        assert got.dtype == new.dtype, name
        if name.startswith("heatmaps/"):
            assert got[redone].tobytes() == new[redone].tobytes(), name
            assert got[~redone].tobytes() == pristine[name][:][~redone].tobytes(), name
        if name == "samples/logits":
            # 0.2.0 took logits from a plain forward pass; now they come from the first
            # composite's own forward through the canonized model, whose zennit-compatible
            # batch-norm leftovers move them by up to ~1e-3 relative
            np.testing.assert_allclose(got, new, rtol=2e-3, atol=1e-4, err_msg=name)
            continue
        np.testing.assert_allclose(got, new, rtol=1e-5, atol=1e-6, err_msg=name)
    result = CliRunner().invoke(app, ["status", str(old), "--verify"])
    assert "verify: 6/6 done units check out" in result.output, result.output

    old_report = merge(str(old), progress=False, resamples=0)
    new_report = merge(str(fresh), progress=False, resamples=0)
    assert old_report.metrics.keys() == new_report.metrics.keys()
    for composite, values in new_report.metrics.items():
        for metric, value in values.items():
            # merge rounds to 6 decimals: a value near 1e-3 moves by one step (1e-6) when a
            # map written on another machine differs by round-off
            expected = pytest.approx(value, rel=1e-4, abs=1.5e-6)
            assert old_report.metrics[composite][metric] == expected, (composite, metric)


@pytest.mark.slow
def test_an_exception_in_a_unit_is_retried_then_reported_and_the_rest_is_kept(tmp_path):
    """A unit whose method raises: once, it is retried on a fresh worker (attempts 2) and
    the store equals an uninterrupted run; every time, the job runs every other unit to
    the end, then exits 2 with one line naming the unit and the cause, and a plain rerun
    redoes only that unit."""
    reference = tmp_path / "ref.zarr"
    assert (
        heatjob(
            "submit", str(write_toml(tmp_path / "ref.toml", spec_020(reference))), "-q"
        ).returncode
        == 0
    )
    counter = tmp_path / "faults"

    once = tmp_path / "once.zarr"
    counter.write_text("1")
    spec = write_toml(tmp_path / "once.toml", spec_020(once))
    run = heatjob("submit", str(spec), "-q", env={"HEATJOB_TEST_FAULT": f"1:{counter}"})
    assert run.returncode == 0, run.stderr
    status = CliRunner().invoke(app, ["status", str(once)])
    assert "retries: 1 (units 1)" in status.output, status.output
    for name in CONTRACT:
        got, want = zarr.open_group(once, mode="r")[name][:], zarr.open_group(reference)[name][:]
        assert got.tobytes() == want.tobytes(), name

    always = tmp_path / "always.zarr"
    counter.write_text("99")
    spec = write_toml(tmp_path / "always.toml", spec_020(always))
    run = heatjob("submit", str(spec), "-q", env={"HEATJOB_TEST_FAULT": f"1:{counter}"})
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "unit 1 (rows 4-7) failed 3 times" in lines[0]
    assert "RuntimeError: injected fault in unit 1" in lines[0]
    assert counter.read_text() == "96"  # three dispatches, no more
    done = records.done_units(zarr.open_group(always, mode="r"))
    assert done.tolist() == [True, False, True, True, True, True]

    run = heatjob("submit", str(spec), "-q")
    assert run.returncode == 0 and ": 1 of 6 units written" in run.stdout, run.stderr
    for name in CONTRACT:
        got, want = zarr.open_group(always, mode="r")[name][:], zarr.open_group(reference)[name][:]
        assert got.tobytes() == want.tobytes(), name


def test_units_that_own_no_sample_write_no_logits_and_every_sample_gets_its_own(tmp_path):
    """Shards of one row: a sample with two labels has rows in two units, and only the
    first owns its logits; the second owns no sample at all and writes none."""
    spec = synthetic_spec(tmp_path / "one.zarr", n_samples=8, shard=1)
    job = prepare(spec, progress=False)
    create_store(job)
    plan, n = job.plan, len(job.sample_ids)
    owned = [owned_samples(u, plan.rows_sample, n) for u in plan.units]
    assert any(len(o) == 0 for o in owned)  # the case under test exists
    worker = UnitWorker(job.spec.to_dict(), spec.store.path, job.num_classes, threads=1)
    for unit, samples in zip(plan.units, owned, strict=True):
        rows = slice(unit.row_start, unit.row_stop)
        worker.run_unit(unit, plan.rows_sample[rows], plan.rows_target[rows], samples)
    root = zarr.open_group(spec.store.path, mode="r")
    assert records.done_units(root).all()
    whole = worker.explain(plan.rows_sample, plan.rows_target, owned=range(n))
    expected = np.stack([whole.logits[s] for s in range(n)])
    # a unit here runs batches of one or two images, the whole explain batches of eight:
    # CPU convolutions round differently by batch, so equal to float32 round-off
    np.testing.assert_allclose(records.sample_logits(root), expected, rtol=1e-5, atol=1e-6)
    chunks = {p.name for p in (tmp_path / "one.zarr" / "units" / "logits" / "c").iterdir()}
    assert chunks == {str(u) for u, o in enumerate(owned) if len(o)}


def test_the_last_units_targets_fill_its_shorter_chunk(tmp_path, monkeypatch):
    """predicted:2 over 11 samples in 4-row units: the last unit has 2 rows, and its
    chunk of rows/target (written whole by the worker, padded as zarr pads an edge chunk)
    reads back as the targets it chose, like every other unit's."""
    monkeypatch.chdir(REPO)
    raw = spec_020(tmp_path / "t.zarr")
    raw["dataset"]["num_samples"] = 11
    job = prepare(parse_spec(raw, source="test"), progress=False)
    create_store(job)
    plan, n = job.plan, len(job.sample_ids)
    assert plan.units[-1].row_stop - plan.units[-1].row_start == 2
    worker = UnitWorker(job.spec.to_dict(), raw["store"]["path"], job.num_classes, threads=1)
    chosen = []
    for unit in plan.units:
        rows = slice(unit.row_start, unit.row_stop)
        owned = owned_samples(unit, plan.rows_sample, n)
        result = worker.run_unit(unit, plan.rows_sample[rows], plan.rows_target[rows], owned)
        chosen.append(result.row_targets)
    targets = zarr.open_group(raw["store"]["path"], mode="r")["rows/target"][:]
    np.testing.assert_array_equal(targets, np.concatenate(chosen))
    assert (targets >= 0).all() and targets.shape == (22,)


def counted(load, calls: list):
    """`load`, noting each batch it is called with in `calls`."""

    def wrapper(samples):
        calls.append(tuple(samples))
        return load(samples)

    return wrapper


def test_the_next_units_first_batch_is_loaded_once_and_changes_nothing(tmp_path, monkeypatch):
    """Each unit given its successor's first batch (`then`, as the runner sends it): every
    batch of the job is loaded exactly once, and the store holds what units run without
    it write (the same batches, so bit for bit)."""
    monkeypatch.chdir(REPO)
    stores = {}
    for hinted in (False, True):
        raw = spec_020(tmp_path / f"{hinted}.zarr")
        job = prepare(parse_spec(raw, source="test"), progress=False)
        create_store(job)
        plan, n = job.plan, len(job.sample_ids)
        worker = UnitWorker(job.spec.to_dict(), raw["store"]["path"], job.num_classes, 1)
        loads = []
        worker.load = counted(worker.load, loads)
        units = plan.units
        for unit, after in zip(units, [*units[1:], None], strict=True):
            then = first_batch(after, plan.rows_sample, n, 4) if hinted and after else None
            rows = slice(unit.row_start, unit.row_stop)
            owned = owned_samples(unit, plan.rows_sample, n)
            worker.run_unit(unit, plan.rows_sample[rows], plan.rows_target[rows], owned, 1, then)
        assert len(loads) == len(set(loads)) == len(units)  # 2 samples a unit: one batch
        stores[hinted] = zarr.open_group(raw["store"]["path"], mode="r")
    for name in ["heatmaps/EpsilonPlusFlat", "rows/target", "units/logits"]:
        np.testing.assert_array_equal(stores[True][name][:], stores[False][name][:])
