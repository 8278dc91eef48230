"""The "dense" format: every element's value, no index."""

import numpy as np

from lscjax._src.coding.bitstream import BitReader, BitWriter
from lscjax._src.coding.values import ValueCodec


def write(w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str) -> dict:
    """Write all n values (bit patterns [n])."""
    values.write(w, bits)
    return {}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (None: all positions, values [n], options)."""
    return None, values.read(r, n, dtype), {}
