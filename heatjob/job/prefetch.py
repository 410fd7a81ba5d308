"""Load the next batch while the current one is computed: one loader thread per worker.

Image decoding and resizing release the GIL for most of their time, so a thread
overlaps them with the model's forward and LRP passes (on a GPU, or on CPU cores
that torch leaves free) without a second process or pickling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], ahead: int = 1) -> Iterator[tuple[T, R]]:
    """(item, load(item)) in the order of `items`; `ahead` loads run while the caller works.

    A load's exception is raised where its item would have been yielded, after the
    items before it. Leaving the loop early waits for the running load and drops the rest.
    """
    source = iter(items)
    pending: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatjob-loader") as pool:

        def submit_next() -> None:
            for item in source:
                pending.append((item, pool.submit(load, item)))
                return

        try:
            for _ in range(max(1, ahead)):
                submit_next()
            while pending:
                item, future = pending.popleft()
                loaded = future.result()
                submit_next()  # starts while the caller works on `loaded`
                yield item, loaded
        finally:
            for _, future in pending:
                future.cancel()
