"""The "bitmask" format: one bit per element (1 = non-zero), then the non-zero values in order."""

import numpy as np

from lscjax._src.coding.bitstream import BitReader, BitWriter
from lscjax._src.coding.values import ValueCodec


def write(w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str) -> dict:
    """Write the n-bit mask and the non-zero values of bit patterns [n]."""
    mask = bits != 0
    w.uints(mask, 1)
    values.write(w, bits[mask])
    return {}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (positions int64 [k], values [k], options)."""
    positions = np.flatnonzero(r.uints(n, 1, "bitmask"))
    return positions, values.read(r, positions.size, dtype), {}
