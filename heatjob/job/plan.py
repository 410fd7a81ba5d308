"""Planning a job: which heatmap rows exist and how they split into work units.

Pure: no Ray, no disk. A row explains one target class of one sample. Rows are
grouped into units of `shard_size` consecutive rows; unit u owns rows
[u*shard_size, (u+1)*shard_size) and exactly one Zarr shard of every heatmap
array, so a unit is written by one worker in one call and never shares a shard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PENDING_TARGET = -1  # rows/target before the worker has chosen it (targets = predicted:K)
SHARD_TARGET_BYTES = 32e6  # an object size object stores serve well (a few MB .. ~100 MB)
SHARD_RANGE_BYTES = (4e6, 100e6)
MIN_UNITS = 16  # an automatic shard_size leaves at least this many units where rows allow


@dataclass(frozen=True)
class Unit:
    index: int
    row_start: int
    row_stop: int
    sample_start: int  # first sample with a row in the unit
    sample_stop: int  # one past the last

    @property
    def n_rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class Plan:
    rows_sample: np.ndarray  # (M,) int64
    rows_target: np.ndarray  # (M,) int32; PENDING_TARGET where the worker decides
    shard_size: int
    units: tuple[Unit, ...]

    @property
    def n_rows(self) -> int:
        return len(self.rows_sample)


@dataclass(frozen=True)
class Labels:
    """The classes present in each sample as (sample, class) pairs, sorted by sample then
    class, without repeats: what planning and the store's samples/labels are made from.
    Pairs, not the (N, C) bool matrix, which is 10 GB at 10^7 samples and 1000 classes."""

    n_samples: int
    n_classes: int
    sample: np.ndarray  # (L,) int64
    klass: np.ndarray  # (L,) int32

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_samples, self.n_classes

    @classmethod
    def of(cls, labels: Labels | np.ndarray | Sequence[Sequence[int]], num_classes: int) -> Labels:
        """From pairs, a (N, C) bool matrix, or per sample a sequence of class indices
        (the pairs and the matrix carry their own number of classes; `num_classes` is for
        the sequences)."""
        if isinstance(labels, Labels):
            return labels
        if isinstance(labels, np.ndarray) and labels.dtype == bool and labels.ndim == 2:
            sample, klass = np.nonzero(labels)  # by sample, then class
            n, c = labels.shape
            return cls(n, c, sample.astype(np.int64), klass.astype(np.int32))
        sample = np.repeat(np.arange(len(labels)), np.array([len(x) for x in labels], np.int64))
        klass = np.fromiter((int(c) for x in labels for c in x), np.int64, len(sample))
        return cls.from_pairs(len(labels), num_classes, sample, klass)

    @classmethod
    def from_pairs(cls, n_samples: int, n_classes: int, sample, klass) -> Labels:
        """From (sample, class) pairs in any order, repeats allowed."""
        sample, klass = np.asarray(sample, np.int64), np.asarray(klass, np.int64)
        if len(klass) and (klass.min() < 0 or klass.max() >= n_classes):
            raise ValueError(f"a class index outside 0 .. {n_classes - 1}")
        key = np.unique(sample * n_classes + klass)  # sorted: by sample, then class
        return cls(n_samples, n_classes, key // n_classes, (key % n_classes).astype(np.int32))

    def dense(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, C) bool: samples start .. stop as a matrix."""
        stop = self.n_samples if stop is None else stop
        lo, hi = np.searchsorted(self.sample, [start, stop])
        block = np.zeros((stop - start, self.n_classes), dtype=bool)
        block[self.sample[lo:hi] - start, self.klass[lo:hi]] = True
        return block


def plan_rows(
    labels: Labels | np.ndarray | Sequence[Sequence[int]],
    targets: str,
    num_classes: int,
    skip: np.ndarray | Sequence[bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows for each sample, ordered by sample then (for labels) class.

    labels: the classes present in each sample (Labels, or what Labels.of takes).
    targets: "labels", "all" or "predicted:K".
    skip: samples that get no rows (their annotation could not be read).
    """
    labels = Labels.of(labels, num_classes)
    n = labels.n_samples
    kept = np.ones(n, bool) if skip is None else ~np.asarray(skip, dtype=bool).reshape(n)
    if targets == "labels":
        keep = kept[labels.sample]
        rows_sample, rows_target = labels.sample[keep], labels.klass[keep]
    elif targets == "all" or targets.startswith("predicted:"):
        per = num_classes if targets == "all" else min(int(targets.split(":")[1]), num_classes)
        rows_sample = np.repeat(np.flatnonzero(kept), per)
        classes = np.arange(per) if targets == "all" else np.full(per, PENDING_TARGET)
        rows_target = np.tile(classes, int(kept.sum()))
    else:
        raise ValueError(f"unknown targets mode {targets!r}")
    return rows_sample.astype(np.int64), rows_target.astype(np.int32)


def effective_shard_size(shard_size: int, targets: str, num_classes: int) -> int:
    """Shard size, rounded up to whole samples where every sample has the same row count.

    With predicted:K and all, a unit then never splits a sample, so the worker
    that picks a sample's targets is the only one that writes its rows.
    """
    if targets == "all":
        per_sample = num_classes
    elif targets.startswith("predicted:"):
        per_sample = min(int(targets.split(":", 1)[1]), num_classes)
    else:
        return shard_size
    return -(-shard_size // per_sample) * per_sample


def suggested_shard_size(bytes_per_row: float) -> int:
    """A power of two of rows that puts a heatmap shard (one object) nearest 32 MB."""
    rows = max(1.0, SHARD_TARGET_BYTES / max(bytes_per_row, 1.0))
    return int(2 ** round(math.log2(rows)))


def auto_shard_size(n_rows: int, bytes_per_row: float) -> int:
    """`[run] shard_size = 0`: the power of two of rows nearest 32 MB per heatmap shard
    (suggested_shard_size), but at most the largest power of two <= n_rows / 16, and at
    least 1, so that a small job still spreads over MIN_UNITS units."""
    cap = 1 << max(0, (n_rows // MIN_UNITS).bit_length() - 1)
    return min(suggested_shard_size(bytes_per_row), cap)


def make_plan(
    labels: Labels | np.ndarray | Sequence[Sequence[int]],
    targets: str,
    num_classes: int,
    shard_size: int,
    skip: np.ndarray | Sequence[bool] | None = None,
) -> Plan:
    """Rows and units for a job (a skipped sample has none, so units still hold whole
    samples under predicted:K and all)."""
    rows_sample, rows_target = plan_rows(labels, targets, num_classes, skip)
    return plan_units(rows_sample, rows_target, targets, num_classes, shard_size)


def plan_units(
    rows_sample: np.ndarray,
    rows_target: np.ndarray,
    targets: str,
    num_classes: int,
    shard_size: int,
) -> Plan:
    """The plan of rows already planned (plan_rows), split into units of shard_size rows
    (rounded up to whole samples where targets give every sample the same rows)."""
    shard_size = effective_shard_size(shard_size, targets, num_classes)
    return Plan(rows_sample, rows_target, shard_size, split_units(rows_sample, shard_size))


def split_units(rows_sample: np.ndarray, shard_size: int) -> tuple[Unit, ...]:
    """Consecutive units of `shard_size` rows (the last may be shorter)."""
    units = []
    for index, start in enumerate(range(0, len(rows_sample), shard_size)):
        stop = min(start + shard_size, len(rows_sample))
        units.append(
            Unit(index, start, stop, int(rows_sample[start]), int(rows_sample[stop - 1]) + 1)
        )
    return tuple(units)


def owned_samples(unit: Unit, rows_sample: np.ndarray, n_samples: int) -> range:
    """The samples whose logits `unit` reports.

    A sample whose rows straddle two units is computed by both; only the unit
    holding its first row reports its logits, so the store does not depend on
    which of the two finished last. Samples without rows (no target) belong to
    the unit where their rows would have been, the last unit takes the tail.
    """
    first = 0 if unit.row_start == 0 else int(rows_sample[unit.row_start - 1]) + 1
    last = int(rows_sample[unit.row_stop - 1]) + 1
    if unit.row_stop == len(rows_sample):
        last = n_samples
    return range(first, last)


def unit_batches(rows_sample: np.ndarray, owned: range, batch_size: int) -> list[list[int]]:
    """The batches a worker loads for a unit: the samples of its rows (`rows_sample`, the
    unit's slice) and those it owns, in order, `batch_size` at a time."""
    samples = sorted(set(rows_sample.tolist()) | set(owned))
    return [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]


def first_batch(
    unit: Unit, rows_sample: np.ndarray, n_samples: int, batch_size: int
) -> list[int] | None:
    """The first batch `unit` loads (`rows_sample`: the whole plan's), None if none."""
    rows = rows_sample[unit.row_start : unit.row_stop]
    batches = unit_batches(rows, owned_samples(unit, rows_sample, n_samples), batch_size)
    return batches[0] if batches else None
