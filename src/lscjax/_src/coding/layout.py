"""How a tensor of any rank is seen by the codecs: a flat C-order vector or a 2-D matrix.

Matrix view (csr, csc, lsc): rank 0 -> [1, 1]; rank 1 [n] -> [1, n]; rank >= 2 -> [prod(shape[:-1]),
shape[-1]]. For a Flax conv kernel (HWIO) that is [H * W * I, O]: `kernel.reshape(-1, O)`, the
layout Flax's own im2col-style convolution contracts with, so block-sparse inference can use the
same reshape. Dense Linen kernels [in, out] are unchanged.
"""

import math
from typing import NamedTuple

import numpy as np

from lscjax._src.errors import FormatError

MAX_ELEMENTS = 2**31
"""Largest tensor (elements) the codecs encode or decode; larger shapes in bytes are rejected."""


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """(rows, cols) of the matrix view of `shape` (see the module docstring)."""
    if len(shape) == 0:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


class BlockGrid(NamedTuple):
    """The blocks of a matrix view [K, N] (input features x output features) cut into
    b_in x b_out blocks, named by the features they span (the one convention for "rows").

    Attributes:
      in_blocks: ceil(K / b_in), blocks along the view's rows: input feature blocks (LSC's
        block rows; a BlockSparse's input block indices).
      out_blocks: ceil(N / b_out), blocks along its columns: output feature blocks (a
        BlockSparse's block rows R, one per output block).
    """

    in_blocks: int
    out_blocks: int


def block_grid(shape: tuple, block: tuple[int, int]) -> BlockGrid:
    """The `BlockGrid` of the matrix view of `shape` cut into blocks ``(b_in, b_out)``."""
    k, n = matrix_shape(shape)
    return BlockGrid(-(-k // block[0]), -(-n // block[1]))


def gaps(positions: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """Zeros before each non-zero: int64 [k] for sorted positions int64 [k].

    The first non-zero's gap counts from position 0. With `starts` (bool [k], True where a new
    segment begins, e.g. a new block), the gap restarts at each segment's first element.
    """
    previous = np.empty_like(positions)
    previous[:1] = -1
    previous[1:] = positions[:-1]
    if starts is not None:
        previous[starts] = -1
    return positions - previous - 1


def gap_table(z: np.ndarray):
    """Distinct gaps: (values int64 [d], counts int64 [d], inverse int64 [k]) for gaps int64 [k]."""
    if z.size and z.max() < 2**22:
        counts = np.bincount(z)
        values = np.flatnonzero(counts)
        lookup = np.zeros(counts.size, np.int64)
        lookup[values] = np.arange(values.size)
        return values, counts[values], lookup[z]
    values, inverse, counts = np.unique(z, return_inverse=True, return_counts=True)
    return values, counts, inverse


def check_positions(positions: np.ndarray, n: int, what: str) -> None:
    """FormatError unless every position int [k] lies in [0, n)."""
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise FormatError(f"bad {what}: a position falls outside the {n} elements")


def segment_ends(lengths: np.ndarray) -> np.ndarray:
    """Exclusive end offsets int64 [s] of consecutive segments of the given lengths int [s]."""
    return np.cumsum(lengths, dtype=np.int64)
