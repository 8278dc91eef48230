"""The static serving plan of a `BlockSparse` layout: row groups of the XLA path and the
overflow split of float layouts, decided by the constructors from the concrete counts.

Row groups: the rows of a random mask differ in length, so padding every row to Kmax multiplies
zeros (Kmax / mean count is 1.6 at 10 % density with 128 block rows). The rows are taken in
descending count order (a stable sort of ``counts``) and cut into groups of ``ceil(R / n)`` rows,
each padded only to its own longest row (n up to MAX_ROW_GROUPS).

Overflow: the few longest rows of a random mask set Kmax; `overflow_width` is the ELL width at
which cutting those rows into a second, compact ELL (`lscjax._src.sparse.block_sparse.Overflow`)
leaves the fewest slots.
"""

import jax.numpy as jnp
import numpy as np

from lscjax._src.sparse.block_sparse import BlockSparse

# Row-group plan of the XLA path: at most MAX_ROW_GROUPS groups of at least MIN_GROUP_ROWS rows
# (each group is one gather + batched matmul, padded to its own longest row), and more groups
# when a group's dequantized blocks would exceed TEMP_BYTES. Each group costs a call into
# XLA:CPU's batched dot, and pads less: 4-bit codes at 4096^2, 10% random blocks, took 0.24-0.26
# of dense in 8 groups against 0.27-0.29 in 4 (b=32, batch 16) and 0.21-0.23 against 0.24-0.25
# (b=64, batch 64); equal rows gain nothing from either (`benchmarks/matmul_plans.py`, two runs).
MAX_ROW_GROUPS = 8
MIN_GROUP_ROWS = 4
# Largest temporary the XLA path makes at once (a row group's dequantized blocks; the gathered x
# of a piece of x's rows). XLA:CPU was several times slower on larger ones (4-bit codes at 4096^2,
# b=64: 35-40 ms with one 25 MB temporary, 5-7 ms in pieces of <= 8 MB; [4096, 4096] @ 10% blocks
# of 32: 0.82 s with the whole gathered x, 0.25 s in pieces of <= 8 MB, dense 0.49 s).
TEMP_BYTES = 8 * 2**20
# Fewest slots, as a fraction of plain ELL's R * Kmax, that the overflow split must save before the
# constructors make one (float values). Each split adds a product and a gather of its output. At
# 4096^2, 10% random blocks, batch 16, b=32, the split saves 23% of the slots and took 0.164
# of dense against 0.206 in place (`benchmarks/matmul_plans.py`; b=64: 0.137 against 0.161).
MIN_OVERFLOW_SAVING = 0.2


def row_groups(counts: np.ndarray, slot_bytes: int, *, coded: bool) -> tuple[int, ...]:
    """The row-group plan of a layout: the padded row length of each group.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).
      slot_bytes: bytes of one dequantized block (b_in * b_out * itemsize of the values).
      coded: whether the blocks are codes (dequantized per group, so a group is a fresh small
        temporary either way) rather than float values (which a slice of whole rows multiplies in
        place, and a shortened or reordered group copies).

    Returns:
      ``(k_0, ..., k_{n-1})``: the rows sorted by descending count (stable) are cut into groups
      of ``ceil(R / min(MAX_ROW_GROUPS, R // MIN_GROUP_ROWS))`` rows, fewer where a group's
      Kmax-padded blocks would exceed TEMP_BYTES (the last group may be shorter); ``k_g >= 1``
      is the largest count of group g. Float values whose groups would all keep length Kmax
      (equal rows) are one group, multiplied in place.
    """
    counts = np.asarray(counts)
    rows = counts.size
    if rows == 0:
        return (1,)
    kmax = max(1, int(counts.max()))
    by_bytes = -(-rows // max(1, TEMP_BYTES // (kmax * slot_bytes)))  # groups that fit
    groups = sorted_plan(counts, max(min(MAX_ROW_GROUPS, rows // MIN_GROUP_ROWS), by_bytes))
    if not coded and min(groups) == kmax:
        groups = (kmax,)
    return groups


def sorted_plan(counts: np.ndarray, n: int) -> tuple[int, ...]:
    """The rows of `counts` (int [R], concrete, R >= 1) sorted by descending count and cut into
    at most n groups of `rows_per_group` rows: the longest count of each group (>= 1)."""
    ordered = np.sort(np.asarray(counts))[::-1]
    rows = ordered.size
    size = -(-rows // min(rows, n))  # then `rows_per_group(rows, plan)` == size
    return tuple(max(1, int(ordered[start])) for start in range(0, rows, size))


def rows_per_group(rows: int, groups: tuple[int, ...]) -> int:
    """Rows of each group of a plan of `rows` rows, in descending-count order (the last may
    have fewer)."""
    return -(-rows // len(groups))


def overflow_width(counts: np.ndarray) -> int | None:
    """The ELL width of the overflow split of a float layout, or None for no split.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).

    Returns:
      The width ``w`` in ``[1, max(counts))`` that leaves the fewest slots, ``R * w + R2 *
      (max(counts) - w)`` with R2 the rows longer than w (the smallest such w), if those are at
      most ``1 - MIN_OVERFLOW_SAVING`` of plain ELL's ``R * max(counts)``; else None.
    """
    counts = np.asarray(counts)
    kmax = int(counts.max(initial=0))
    if kmax < 2:
        return None
    widths = np.arange(1, kmax)
    longer = (counts[None, :] > widths[:, None]).sum(axis=1)
    slots = counts.size * widths + longer * (kmax - widths)
    best = int(np.argmin(slots))
    return (
        int(widths[best]) if slots[best] <= (1 - MIN_OVERFLOW_SAVING) * counts.size * kmax else None
    )


def slot_bytes(w: BlockSparse) -> int:
    """Bytes of one dequantized block of `w`."""
    return w.block[0] * w.block[1] * jnp.dtype(w.dtype).itemsize
