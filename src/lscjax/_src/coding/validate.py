"""The one validation layer for header fields: what every reader (and, for shapes, every writer)
checks before it trusts a value read from bytes.

Every check takes the exception class to raise: readers raise FormatError (the bytes are bad),
writers raise LscError (the caller's data cannot be stored), so a writer refuses exactly what a
reader would refuse. Arithmetic is on Python ints: a declared size never overflows.
"""

import math

import numpy as np

from lscjax._src.coding.layout import MAX_ELEMENTS
from lscjax._src.errors import FormatError, LscError
from lscjax._src.quant.qarray import QArray, check_qarray

MAX_NDIM = 16
"""Most axes a stored tensor may have (encoded or raw)."""


def is_int(value) -> bool:
    """True for a Python or NumPy integer that is not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(value, what: str, lo: int = 0, hi: int | None = None, error=FormatError) -> int:
    """`value` as an int in [lo, hi] (hi None: no upper bound), else `error` naming `what`."""
    if not is_int(value):
        raise error(f"{what} must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise error(f"{what} must be {bound}, got {value}")
    return int(value)


def check_shape(shape, what: str, error=FormatError) -> tuple:
    """`shape` (a sequence of ints) as a tuple, else `error` naming `what`.

    At most MAX_NDIM axes, each dimension in [0, MAX_ELEMENTS], at most MAX_ELEMENTS elements.
    """
    if not isinstance(shape, list | tuple):
        raise error(f"{what} must be a list of integers, got {type(shape).__name__}")
    if len(shape) > MAX_NDIM:
        raise error(f"{what} has {len(shape)} axes; at most {MAX_NDIM} are supported")
    dims = tuple(check_int(d, f"{what} dimension", 0, MAX_ELEMENTS, error) for d in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise error(f"{what} {dims} exceeds {MAX_ELEMENTS} elements")
    return dims


def check_codes_header(
    method: str, bits: int, dense_shape: tuple, codes_shape: tuple, dtype, codebook, what: str
) -> None:
    """FormatError unless the stored QArray facts are consistent: the method, the bits (against
    the codebook size), the codes' dtype (uint8 / uint16) and shape (against the dense shape),
    the codebook's layout (`quant.qarray.check_qarray`, on shape-only stand-ins)."""
    codes = np.broadcast_to(np.zeros((), dtype), codes_shape)
    try:
        check_qarray(what, QArray(codes, codebook, method, bits, dense_shape))
    except LscError as err:
        raise FormatError(f"bad quantized header: {err}") from None
