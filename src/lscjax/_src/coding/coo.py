"""The "coo" format: the number of non-zeros, then per axis the coordinates of every non-zero
(ceil(log2(dim)) bits each, axis by axis), then the values in C order."""

import numpy as np

from lscjax._src.coding.bitstream import BitReader, BitWriter
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError


def write(w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str) -> dict:
    """Write coordinates and values of the non-zeros of bit patterns [n]."""
    positions = np.flatnonzero(bits)
    w.gamma(positions.size)
    coords = np.unravel_index(positions, shape) if shape else ()
    for axis, coord in zip(shape, coords, strict=True):
        w.uints(coord, (axis - 1).bit_length())
    values.write(w, bits[positions])
    return {}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (positions int64 [k], values [k], options)."""
    k = r.gamma("coo count", limit=n)
    coords = [
        r.uints(k, (axis - 1).bit_length(), "coo coordinates").astype(np.int64) for axis in shape
    ]
    if any(c.size and c.max() >= axis for c, axis in zip(coords, shape, strict=True)):
        raise FormatError("bad coo coordinates: a coordinate exceeds its axis")
    positions = np.ravel_multi_index(coords, shape) if shape else np.zeros(k, np.int64)
    return positions, values.read(r, k, dtype), {}
