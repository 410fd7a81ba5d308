"""`[run] shard_size` left out (or 0): prepare picks it from the job's rows and row bytes,
keeps the one a store being resumed was made with, and the dry run says which it is."""

from __future__ import annotations

import numpy as np
import pytest

from heatjob.errors import SpecError
from heatjob.job.plan import auto_shard_size
from heatjob.job.prepare import job_from_arrays, prepare
from heatjob.job.state import store_state
from heatjob.spec import parse_spec
from heatjob.store.layout import create_store

ROW_224_FLOAT16 = 224 * 224 * 2  # 100,352 B


def spec(tmp_path, size=224, dtype="float16", targets="labels", n_samples=24, **run):
    return parse_spec(
        {
            "dataset": {"kind": "synthetic", "num_samples": n_samples, "image_size": size},
            "model": {"arch": "small_cnn", "num_classes": 6},
            "attribution": {"composites": ["EpsilonPlusFlat"], "targets": targets},
            "store": {"path": str(tmp_path / "out.zarr"), "dtype": dtype},
            "run": run,
        },
        source="job.toml",
    )


def one_label_each(n: int) -> np.ndarray:
    labels = np.zeros((n, 6), dtype=bool)
    labels[np.arange(n), np.arange(n) % 6] = True
    return labels


def test_left_out_it_is_0_and_a_negative_one_is_refused_naming_the_key(tmp_path):
    assert spec(tmp_path).run.shard_size == 0
    assert spec(tmp_path, shard_size=0).run.shard_size == 0
    with pytest.raises(SpecError) as error:
        spec(tmp_path, shard_size=-4)
    assert (
        str(error.value) == "job.toml: [run] shard_size must be 0 (automatic) or positive, got -4"
    )
    with pytest.raises(SpecError, match=r"\[run\] shard_size must be an integer \(0 = automatic"):
        spec(tmp_path, shard_size="auto")


def test_auto_at_224_float16_is_256_rows_and_float32_halves_it(tmp_path):
    """32e6 / 100,352 B = 319 rows -> 2^round(log2 319) = 2^8; float32 (200,704 B a row):
    159 -> 2^7. 8192 rows allow up to 512 (8192 / 16), so the cap is not what decides."""
    labels = one_label_each(8192)
    job = job_from_arrays(spec(tmp_path), labels)
    assert job.shard_size_from == "auto"
    assert job.spec.run.shard_size == job.plan.shard_size == 256
    assert len(job.plan.units) == 32
    assert job.spec.to_dict()["run"]["shard_size"] == 256  # the store's spec holds it
    assert job_from_arrays(spec(tmp_path, dtype="float32"), labels).plan.shard_size == 128
    assert auto_shard_size(8192, ROW_224_FLOAT16) == 256
    assert auto_shard_size(8192, 2 * ROW_224_FLOAT16) == 128


@pytest.mark.parametrize(
    ("n_rows", "expected"), [(64, 4), (1000, 32), (4095, 128), (4096, 256), (31, 1), (1, 1)]
)
def test_a_small_job_is_capped_to_at_least_16_units(tmp_path, n_rows, expected):
    """The largest power of two <= rows / 16 (at least 1): the 64-sample demo is 16
    units of 4 rows, not one of 64."""
    assert auto_shard_size(n_rows, ROW_224_FLOAT16) == expected
    job = job_from_arrays(spec(tmp_path), one_label_each(n_rows))
    assert job.plan.shard_size == expected
    assert len(job.plan.units) >= min(16, n_rows)


def test_an_explicit_shard_size_is_kept(tmp_path):
    job = job_from_arrays(spec(tmp_path, shard_size=64), one_label_each(8192))
    assert job.shard_size_from == "spec"
    assert job.spec.run.shard_size == job.plan.shard_size == 64
    assert job_from_arrays(spec(tmp_path, shard_size=7), one_label_each(10)).plan.shard_size == 7


def test_under_predicted_k_the_spec_keeps_the_auto_size_and_units_hold_whole_samples(tmp_path):
    job = job_from_arrays(spec(tmp_path, targets="predicted:3"), one_label_each(8192))
    assert job.spec.run.shard_size == 256  # 24,576 rows: 256 is below the cap of 1024
    assert job.plan.shard_size == 258  # 86 whole samples of 3 rows


def test_a_store_made_with_shard_size_64_is_resumed_by_a_spec_that_leaves_it_out(tmp_path):
    """As a heatjob 0.2.0 store: its spec says 64 (the old default, filled in). Auto alone
    would split these rows otherwise, and the store would be refused as another job's."""
    explicit = prepare(spec(tmp_path, size=32, shard_size=64), progress=False)
    create_store(explicit)
    job = prepare(spec(tmp_path, size=32), progress=False)
    assert job.shard_size_from == "store"
    assert job.spec.run.shard_size == job.plan.shard_size == 64
    state = store_state(job)
    assert state.resuming and len(state.pending) == len(explicit.plan.units)

    anew = prepare(spec(tmp_path, size=32), progress=False, overwrite=True)
    assert anew.shard_size_from == "auto"
    assert anew.plan.shard_size == auto_shard_size(anew.plan.n_rows, 32 * 32 * 2) != 64
    assert store_state(anew, overwrite=True).replaces


def test_resume_takes_the_stored_spec_s_shard_size_not_the_rounded_root_attribute(tmp_path):
    """predicted:3 rounds 64 up to 66 rows (the root's shard_size); the spec says 64, and
    taking 66 would make this spec another job's ([run] shard_size 64 there, 66 here)."""
    create_store(
        prepare(spec(tmp_path, size=32, targets="predicted:3", shard_size=64), progress=False)
    )
    job = prepare(spec(tmp_path, size=32, targets="predicted:3"), progress=False)
    assert job.spec.run.shard_size == 64 and job.plan.shard_size == 66
    assert store_state(job).resuming


def test_a_store_made_under_auto_is_resumed_under_auto(tmp_path):
    first = prepare(spec(tmp_path, size=32), progress=False)
    root = create_store(first)
    assert first.shard_size_from == "auto"
    assert root.attrs["heatjob"]["spec"]["run"]["shard_size"] == first.spec.run.shard_size
    assert root.attrs["heatjob"]["shard_size"] == first.plan.shard_size
    again = prepare(spec(tmp_path, size=32), progress=False)
    assert again.shard_size_from == "store" and again.plan.shard_size == first.plan.shard_size
    assert store_state(again).resuming


def test_the_dry_run_names_the_automatic_size(tmp_path):
    from heatjob.job.dryrun import dry_run, format_dry_run

    raw = spec(tmp_path, size=32, n_samples=8, batch_size=4, workers=1)
    run = dry_run(raw, progress=False)
    n_rows = run.job.plan.n_rows
    text = format_dry_run(run)
    shards = next(line for line in text.splitlines() if line.startswith("shards"))
    assert (
        f"shard_size auto: 1 row, capped: the largest power of two <= {n_rows} rows / 16" in shards
    )
    assert "~2.0 kB per heatmap shard raw (target 32.0 MB, range 4.0 MB..100.0 MB)" in shards
    assert f"{n_rows} units of 1 rows" in text

    create_store(prepare(spec(tmp_path, size=32, n_samples=8, shard_size=2), progress=False))
    text = format_dry_run(dry_run(raw, progress=False))
    assert "shard_size auto: 2 rows, as the store being resumed was made with" in text
    assert "(resumes: 0 of" in text

    explicit = format_dry_run(
        dry_run(
            spec(tmp_path, size=32, n_samples=8, shard_size=2, batch_size=4, workers=1),
            progress=False,
        )
    )
    assert "shard_size 2 (set in the spec): ~" in explicit
    assert "outside 4.0 MB..100.0 MB: [run] shard_size = 16384" in explicit


def test_the_shards_line_at_224_px_with_and_without_whole_samples(tmp_path):
    from heatjob.job.dryrun import shard_line

    labels = one_label_each(8192)
    assert shard_line(job_from_arrays(spec(tmp_path), labels), 50_000.0) == (
        "shard_size auto: 256 rows, ~25.7 MB per heatmap shard raw "
        "(target 32.0 MB, range 4.0 MB..100.0 MB), ~12.8 MB stored (one object)"
    )
    predicted = job_from_arrays(spec(tmp_path, targets="predicted:3"), labels)
    assert shard_line(predicted, 50_000.0).startswith(
        "shard_size auto: 256 rows, 258 with whole samples, ~25.9 MB per heatmap shard raw"
    )
    explicit = job_from_arrays(spec(tmp_path, targets="predicted:3", shard_size=64), labels)
    assert shard_line(explicit, 100_000.0) == (
        "shard_size 64 (set in the spec, 66 with whole samples): ~6.6 MB per heatmap shard "
        "(one object, 66 rows); within 4.0 MB..100.0 MB"
    )
