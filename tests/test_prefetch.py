"""The loader thread: same batches in the same order as a plain loop, loaded ahead, and
the next unit's first batch loaded before that unit is asked for."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heatjob.job.prefetch import Loader


@given(st.lists(st.integers()), st.integers(1, 4))
def test_yields_every_item_and_its_load_in_order(items, ahead):
    loader = Loader(lambda x: x * 3 + 1, ahead)
    assert list(loader.batches(items)) == [(x, x * 3 + 1) for x in items]


def test_the_next_load_runs_while_the_caller_holds_the_current_one():
    started = {i: threading.Event() for i in range(3)}
    threads = {}

    def load(i):
        threads[i] = threading.get_ident()
        started[i].set()
        return i

    for i, _ in Loader(load).batches(range(3)):
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
        for i, _ in Loader(load).batches(range(5)):
            seen.append(i)
    assert seen == [0, 1]


def test_leaving_early_loads_at_most_one_batch_more():
    loaded = []
    finished = threading.Event()

    def load(i):
        loaded.append(i)
        if i == 4:
            finished.set()
        return i

    for i, _ in Loader(load).batches(range(100)):
        if i == 3:
            break
    finished.wait(timeout=1)  # 4 may be cancelled before it starts, or run to its end
    assert loaded in ([0, 1, 2, 3], [0, 1, 2, 3, 4])


def test_the_next_calls_first_item_loads_before_that_call_and_only_once():
    """`then`: loaded as soon as the last item's load has started, while the caller still
    works on this call's items; the next call whose first item it is gets that load."""
    calls, second_started = [], threading.Event()

    def load(i):
        calls.append(i)
        if i == (1, 0):
            second_started.set()
        return i

    loader = Loader(load)
    for item, _ in loader.batches([(0, 0), (0, 1)], then=(1, 0)):
        if item == (0, 1):  # the last item of this call: the next call's first is loading
            assert second_started.wait(timeout=10)
    assert list(loader.batches([(1, 0), (1, 1)])) == [((1, 0), (1, 0)), ((1, 1), (1, 1))]
    assert calls == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_next_item_that_does_not_come_is_dropped():
    calls, loaded_2 = [], threading.Event()

    def load(i):
        calls.append(i)
        if i == 2:
            loaded_2.set()
        return i * 10

    loader = Loader(load)
    assert list(loader.batches([1], then=2)) == [(1, 10)]
    assert loaded_2.wait(timeout=10)  # the kept load has run
    assert list(loader.batches([5, 2])) == [(5, 50), (2, 20)]  # 2 is not first: loaded again
    assert list(loader.batches([2])) == [(2, 20)]  # nothing kept over from a call without it
    assert calls.count(2) == 3
