"""Slices of one tensor's work shared with the idle threads of a pool.

`lscjax._src.streaming.compress_file` encodes tensors in parallel threads. A tensor far larger
than the others (a token embedding, an LM head) would keep one thread busy while the rest sit
idle, so the stages that are independent per slice of a tensor (pruning, counting, assigning
codes, block planning) run through `shared_map`: the calling thread works through the slices
itself, and threads of the pool named by `sharing` that are free take slices too. The slices
are a function of the tensor's shape alone (`row_spans`) and the results come back in order, so
the output is the same for any number of threads. Outside `sharing` (the in-memory path, or a
thread that is itself working on a slice) `shared_map` is a plain loop.
"""

import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

SLICE_ELEMENTS = 1 << 22
"""Elements per slice of a large tensor (a tensor of at most this many is one slice)."""

_SHARED = contextvars.ContextVar("lscjax_shared_pool", default=None)


@contextlib.contextmanager
def sharing(pool: concurrent.futures.Executor, helpers: int) -> Iterator[None]:
    """Within the block, `shared_map` in this thread lets up to `helpers` threads of `pool`
    take slices (0: none)."""
    token = _SHARED.set((pool, helpers) if helpers > 0 else None)
    try:
        yield
    finally:
        _SHARED.reset(token)


def row_spans(rows: int, row_elements: int, unit: int = 1) -> list[slice]:
    """Consecutive slices covering the rows of a [rows, row_elements] array (a flat array:
    row_elements 1), each a multiple of `unit` rows but the last and about SLICE_ELEMENTS
    elements: a function of the sizes alone."""
    per_slice = max(unit, SLICE_ELEMENTS // max(row_elements, 1) // unit * unit)
    return [slice(start, min(start + per_slice, rows)) for start in range(0, rows, per_slice)]


def shared_map(fn: Callable, items: Sequence) -> list:
    """``[fn(item) for item in items]``, the items shared with the pool of `sharing`.

    The caller takes items in order until none is left; helpers submitted to the pool take
    them too when a thread is free. Helpers that have not started when the caller runs out
    are cancelled, so a pool whose every thread is inside `shared_map` never waits on itself.
    An exception in any item is raised here (the remaining items are not started).
    """
    shared = _SHARED.get()
    if shared is None or len(items) < 2:
        return [fn(item) for item in items]
    pool, helpers = shared
    results = [None] * len(items)
    order = iter(range(len(items)))
    lock = threading.Lock()
    failures = []

    def drain() -> None:
        while True:
            with lock:
                i = None if failures else next(order, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as err:
                failures.append(err)
                return

    futures = [pool.submit(drain) for _ in range(min(helpers, len(items) - 1))]
    drain()
    running = [f for f in futures if not f.cancel()]
    concurrent.futures.wait(running)
    if failures:
        raise failures[0]
    return results


def elementwise(fn: Callable, *arrays: np.ndarray, dtype) -> np.ndarray:
    """``fn(*arrays)`` for an elementwise `fn`, computed over flat slices of the arrays (all
    of one shape) shared as in `shared_map`, into a new array of that shape and `dtype`."""
    flats = [np.asarray(a).reshape(-1) for a in arrays]
    spans = row_spans(flats[0].size, 1)
    if len(spans) <= 1:  # one slice: no copy into a new array
        return np.asarray(fn(*flats), dtype).reshape(np.shape(arrays[0]))
    out = np.empty(flats[0].size, dtype)

    def one(span: slice) -> None:
        out[span] = fn(*(flat[span] for flat in flats))

    shared_map(one, spans)
    return out.reshape(np.shape(arrays[0]))


def count_nonzero(array) -> int:
    """``np.count_nonzero(array)``, over flat slices shared as in `shared_map`."""
    flat = np.asarray(array).reshape(-1)
    return sum(shared_map(lambda span: int(np.count_nonzero(flat[span])), row_spans(flat.size, 1)))
