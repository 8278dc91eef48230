"""Slices of one tensor shared with a pool's idle threads: results in order, the same for any
number of threads, errors raised, and no pool that waits on itself."""

import concurrent.futures
import threading
import time

import numpy as np
import pytest

from lscjax._src import parallel


def test_row_spans_cover_the_rows_in_multiples_of_the_unit(monkeypatch):
    monkeypatch.setattr(parallel, "SLICE_ELEMENTS", 1000)
    for rows, row_elements, unit in [
        (0, 5, 1),
        (7, 1, 1),
        (5000, 1, 1),
        (300, 40, 8),
        (9, 10**6, 4),
    ]:
        spans = parallel.row_spans(rows, row_elements, unit)
        covered = np.concatenate([np.arange(rows)[s] for s in spans] or [np.zeros(0, int)])
        np.testing.assert_array_equal(covered, np.arange(rows))
        assert all((s.stop - s.start) % unit == 0 for s in spans[:-1])
        if len(spans) > 1:  # about SLICE_ELEMENTS each (at least one unit)
            assert (spans[0].stop - spans[0].start) == max(
                unit, 1000 // row_elements // unit * unit
            )


def test_shared_map_equals_a_loop_for_any_number_of_threads():
    items = list(range(37))
    threads = set()

    def square(x):
        threads.add(threading.get_ident())
        time.sleep(0.002)  # long enough for the helpers to start
        return x * x

    assert parallel.shared_map(square, items) == [x * x for x in items]  # no pool: a loop
    for workers in (1, 2, 4):
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            with parallel.sharing(pool, workers):
                assert parallel.shared_map(square, items) == [x * x for x in items]
    assert len(threads) > 1  # helpers did take items


def test_a_pool_whose_threads_all_share_never_waits_on_itself():
    """Every thread of a 2-thread pool runs a job that shares its slices with the same pool:
    helpers queued behind busy threads are cancelled, and each job finishes alone."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:

        def job(j):
            with parallel.sharing(pool, 1):
                # a nested shared_map runs in the helper as a plain loop
                return parallel.shared_map(
                    lambda i: sum(parallel.shared_map(lambda x: x + j, range(i))), range(30)
                )

        futures = [pool.submit(job, j) for j in range(6)]
        done, pending = concurrent.futures.wait(futures, timeout=60)
        assert not pending
        for j, future in enumerate(futures):
            assert future.result() == [sum(x + j for x in range(i)) for i in range(30)]


def test_an_error_in_a_slice_is_raised_and_stops_the_rest():
    started = []

    def fail_at_5(x):
        started.append(x)
        if x == 5:
            raise ValueError("slice 5")
        return x

    with concurrent.futures.ThreadPoolExecutor(1) as pool, parallel.sharing(pool, 1):
        with pytest.raises(ValueError, match="slice 5"):
            parallel.shared_map(fail_at_5, range(1000))
    assert len(started) < 1000


def test_elementwise_and_count_nonzero_equal_numpy(monkeypatch):
    monkeypatch.setattr(parallel, "SLICE_ELEMENTS", 64)
    rng = np.random.default_rng(0)
    a = np.where(rng.random((37, 29)) < 0.3, rng.normal(size=(37, 29)), 0.0)
    with concurrent.futures.ThreadPoolExecutor(3) as pool, parallel.sharing(pool, 2):
        got = parallel.elementwise(lambda x, y: x * y > 0, a, a + 1, dtype=bool)
        count = parallel.count_nonzero(a)
    np.testing.assert_array_equal(got, a * (a + 1) > 0)
    assert count == np.count_nonzero(a)
