"""Load the next batch while the current one is computed: one loader thread per worker,
for the worker's whole life.

Image decoding and resizing release the GIL for most of their time, so a thread
overlaps them with the model's forward and LRP passes (on a GPU, or on CPU cores
that torch leaves free) without a second process or pickling. Within a unit the next
batch loads while the current one is explained; across units, the first batch of the
unit the worker expects next (`then`) loads while it writes this unit's results and
waits for its next call, so a unit's first batch need not load unoverlapped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Loader(Generic[T, R]):
    """`load(item)` for the items of each `batches` call, run ahead in one thread."""

    def __init__(self, load: Callable[[T], R], ahead: int = 1) -> None:
        self._load = load
        self._ahead = max(1, ahead)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatjob-loader")
        self._kept: tuple[T, Future[R]] | None = None  # loaded for the next call

    def batches(self, items: Iterable[T], then: T | None = None) -> Iterator[tuple[T, R]]:
        """(item, load(item)) in the order of `items`, `ahead` loads running while the
        caller works; once the last item's load has started, `then`'s starts too, kept for
        the next call, whose first item uses it if it is equal (else it is dropped).

        A load's exception is raised where its item would have been yielded, after the
        items before it. Leaving the loop early waits for nothing and drops the rest.
        """
        source = iter(items)
        pending: deque[tuple[T, Future[R]]] = deque()
        kept, self._kept = self._kept, None

        def submit_next() -> None:
            nonlocal kept, then
            for item in source:
                if kept is not None and kept[0] == item:
                    future = kept[1]
                else:
                    future = self._pool.submit(self._load, item)
                    if kept is not None:
                        kept[1].cancel()
                kept = None
                pending.append((item, future))
                return
            if then is not None:
                self._kept, then = (then, self._pool.submit(self._load, then)), None

        try:
            for _ in range(self._ahead):
                submit_next()
            while pending:
                item, future = pending.popleft()
                loaded = future.result()
                submit_next()  # starts while the caller works on `loaded`
                yield item, loaded
        finally:
            for _, future in pending:
                future.cancel()
