"""The "csr" / "csc" formats of Deep Compression: 2a + n + 1 numbers for a non-zeros, n rows.

Matrix view: `layout.matrix_shape`. CSR stores the row pointers (n + 1 numbers of
ceil(log2(a + 1)) bits), the column index of every non-zero (`index_width` bits, default the
fewest that hold the largest column, configurable), then the a values in row order. CSC is CSR of
the transpose.
"""

import numpy as np

from lscjax._src.coding.bitstream import BitReader, BitWriter
from lscjax._src.coding.layout import matrix_shape
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError, LscError


def _oriented(shape: tuple, columns_first: bool):
    rows, cols = matrix_shape(shape)
    return (cols, rows) if columns_first else (rows, cols)


def write(
    w: BitWriter,
    bits: np.ndarray,
    shape: tuple,
    values: ValueCodec,
    entropy: str,
    *,
    columns_first: bool,
    index_width: int | None = None,
) -> dict:
    """Write bit patterns [n] as CSR (or CSC when `columns_first`)."""
    rows, cols = _oriented(shape, columns_first)
    matrix = bits.reshape(matrix_shape(shape))
    matrix = matrix.T if columns_first else matrix
    needed = (cols - 1).bit_length()
    index_width = needed if index_width is None else index_width
    if not isinstance(index_width, int) or not needed <= index_width <= 64:
        raise LscError(f"index_width must be an int in [{needed}, 64] here, got {index_width!r}")
    row, col = np.nonzero(matrix)
    pointers = np.searchsorted(row, np.arange(rows + 1))
    w.gamma(index_width)
    w.gamma(row.size)
    w.uints(pointers, row.size.bit_length())
    w.uints(col, index_width)
    values.write(w, matrix[row, col])
    return {"index_width": index_width}


def read(
    r: BitReader,
    shape: tuple,
    n: int,
    values: ValueCodec,
    dtype,
    entropy: str,
    *,
    columns_first: bool,
):
    """-> (positions int64 [a], values [a], options)."""
    rows, cols = _oriented(shape, columns_first)
    index_width = r.gamma("csr index width", limit=64)
    count = r.gamma("csr count", limit=n)
    pointers = r.uints(rows + 1, count.bit_length(), "csr row pointers").astype(np.int64)
    col = r.uints(count, index_width, "csr column indices").astype(np.int64)
    if pointers[0] != 0 or pointers[-1] != count or np.any(np.diff(pointers) < 0):
        raise FormatError("bad csr row pointers: not a non-decreasing 0..count sequence")
    if col.size and col.max() >= cols:
        raise FormatError("bad csr column indices: an index exceeds the matrix width")
    row = np.repeat(np.arange(rows), np.diff(pointers))
    positions = col * rows + row if columns_first else row * cols + col
    return positions, values.read(r, count, dtype), {"index_width": index_width}
