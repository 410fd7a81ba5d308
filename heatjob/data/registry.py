"""The data set kinds: one table, filled where each reader is defined (`@register_dataset`).

Importing heatjob.data (which any import of this module does first) imports every
reader, so the table is complete before anyone looks at it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from heatjob.errors import DataError

if TYPE_CHECKING:
    from heatjob.data.base import Dataset
    from heatjob.spec import JobSpec

T = TypeVar("T", bound=type)
_KINDS: dict[str, type] = {}


def register_dataset(kind: str) -> Callable[[T], T]:
    """Class decorator: `kind` in a spec's [dataset] table opens this reader through its
    `open(root=, split=, limit=, num_samples=, seed=, image_size=, **options)` class method,
    `options` being the table's other keys (a reader takes what it needs, `**_` the rest)."""

    def add(cls: T) -> T:
        if kind in _KINDS:
            raise ValueError(f"dataset kind {kind!r} is registered twice")
        _KINDS[kind] = cls
        return cls

    return add


def dataset_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def open_dataset(
    kind: str,
    root: str,
    split: str,
    limit: int,
    *,
    num_samples: int = 256,
    seed: int = 0,
    image_size: int = 64,
    **options: object,
) -> Dataset:
    """The data set named by the job spec's [dataset] table.

    `limit` 0 keeps every sample, otherwise the first `limit` of the split's order.
    """
    if limit < 0:
        raise DataError(f"dataset limit must be 0 (all) or positive, got {limit}")
    if kind not in _KINDS:
        raise DataError(
            f"unknown dataset kind {kind!r}; expected one of {', '.join(dataset_kinds())}"
        )
    return _KINDS[kind].open(
        root=root,
        split=split,
        limit=limit,
        num_samples=num_samples,
        seed=seed,
        image_size=image_size,
        **options,
    )


def open_job_dataset(spec: JobSpec) -> Dataset:
    """The data set of a job spec's [dataset] table."""
    options = dataclasses.asdict(spec.dataset)
    kind, root, split, limit = (options.pop(key) for key in ("kind", "root", "split", "limit"))
    return open_dataset(kind, root, split, limit, **options)
