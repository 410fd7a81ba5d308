"""The loader thread: same batches in the same order as a plain loop, loaded ahead."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heatjob.job.prefetch import prefetch


@given(st.lists(st.integers()), st.integers(1, 4))
def test_yields_every_item_and_its_load_in_order(items, ahead):
    assert list(prefetch(items, lambda x: x * 3 + 1, ahead)) == [(x, x * 3 + 1) for x in items]


def test_the_next_load_runs_while_the_caller_holds_the_current_one():
    started = {i: threading.Event() for i in range(3)}
    threads = {}

    def load(i):
        threads[i] = threading.get_ident()
        started[i].set()
        return i

    for i, _ in prefetch(range(3), load):
        if i < 2:  # the caller has item i; item i+1 must start without the caller asking
            assert started[i + 1].wait(timeout=10)
    assert threading.get_ident() not in threads.values()


def test_a_failed_load_is_raised_at_its_place_after_the_items_before_it():
    def load(i):
        if i == 2:
            raise OSError("broken image 2")
        return i

    seen = []
    with pytest.raises(OSError, match="broken image 2"):
        for i, _ in prefetch(range(5), load):
            seen.append(i)
    assert seen == [0, 1]


def test_leaving_early_loads_at_most_one_batch_more():
    loaded = []

    def load(i):
        loaded.append(i)
        return i

    for i, _ in prefetch(range(100), load):
        if i == 3:
            break
    assert loaded in ([0, 1, 2, 3], [0, 1, 2, 3, 4])  # 4 may be cancelled before it starts
