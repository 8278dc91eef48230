"""Bit-level writer and reader: the one place where codec bytes are produced and bounds-checked.

Bits are big-endian (the first bit is the most significant bit of the first byte). Every write is
tagged "value" or "index" so that an encoding reports exactly how many bits went to weight values
and how many to metadata; the reader counts the same way, so `Encoded.from_bytes` recovers the
accounting. Every read is checked against the buffer before anything is allocated: a length read
from corrupted bytes raises `FormatError`, never a crash or a giant allocation; what a read would
allocate beyond the buffer's own bits (zero-width fields, entropy-decoded symbols) is charged to
the reader's `Budget` first.
"""

import numpy as np
from bitarray import bitarray
from bitarray.util import ba2int, int2ba

from lscjax._src.coding.budget import Budget
from lscjax._src.errors import FormatError

VALUE = "value"
INDEX = "index"
BYTE_WIDTHS = {8: ">u1", 16: ">u2", 32: ">u4", 64: ">u8"}
MAX_GAMMA_BITS = 64


def uint_dtype(width: int) -> np.dtype:
    """The narrowest NumPy unsigned dtype holding `width`-bit integers (width <= 64)."""
    for bits in (8, 16, 32, 64):
        if width <= bits:
            return np.dtype(f"u{bits // 8}")
    raise ValueError(f"width {width} exceeds 64 bits")


def pack_uints(values: np.ndarray, width: int) -> bitarray:
    """Fixed-width big-endian packing.

    Args:
      values: unsigned integers [n], each < 2**width.
      width: bits per value, 0 to 64.

    Returns:
      A bitarray of exactly n * width bits.
    """
    out = bitarray(endian="big")
    values = np.asarray(values).reshape(-1)
    if width == 0 or values.size == 0:
        return out
    if width in BYTE_WIDTHS:
        out.frombytes(values.astype(BYTE_WIDTHS[width]).tobytes())
        return out
    planes = np.empty((values.size, width), np.uint8)
    wide = values.astype(np.uint64)
    for bit in range(width):
        planes[:, bit] = (wide >> np.uint64(width - 1 - bit)) & np.uint64(1)
    out.frombytes(np.packbits(planes.reshape(-1)).tobytes())
    del out[values.size * width :]
    return out


def unpack_uints(bits: bitarray, count: int, width: int) -> np.ndarray:
    """Inverse of `pack_uints`: `count` values of `width` bits -> unsigned [count] (`uint_dtype`)."""
    dtype = uint_dtype(max(width, 1))
    if width == 0 or count == 0:
        return np.zeros(count, dtype)
    raw = np.frombuffer(bits.tobytes(), np.uint8)
    if width in BYTE_WIDTHS:
        return raw.view(BYTE_WIDTHS[width])[:count].astype(dtype)
    planes = np.unpackbits(raw)[: count * width].reshape(count, width)
    out = np.zeros(count, np.uint64)
    for bit in range(width):
        out = (out << np.uint64(1)) | planes[:, bit]
    return out.astype(dtype)


def gamma_bits(x: int) -> int:
    """Length in bits of the Elias-gamma code of x + 1 (x >= 0), as written by `BitWriter.gamma`."""
    return 2 * (int(x) + 1).bit_length() - 1


class BitWriter:
    """Appends tagged bit fields; `counts` holds the bits written per tag ("value", "index")."""

    def __init__(self):
        self.bits = bitarray(endian="big")
        self.counts = {VALUE: 0, INDEX: 0}

    def bitarray(self, bits: bitarray, kind: str = INDEX) -> None:
        """Append raw bits."""
        self.bits += bits
        self.counts[kind] += len(bits)

    def uint(self, x: int, width: int, kind: str = INDEX) -> None:
        """Append the unsigned integer x (< 2**width) in `width` bits."""
        if width:
            self.bitarray(int2ba(int(x), width, endian="big"), kind)

    def gamma(self, x: int, kind: str = INDEX) -> None:
        """Append x >= 0 as the Elias-gamma code of x + 1 (2 floor(log2(x + 1)) + 1 bits)."""
        x = int(x) + 1
        self.uint(0, x.bit_length() - 1, kind)
        self.uint(x, x.bit_length(), kind)

    def uints(self, values: np.ndarray, width: int, kind: str = INDEX) -> None:
        """Append unsigned integers [n] at a fixed `width` bits each."""
        self.bitarray(pack_uints(values, width), kind)

    def getvalue(self) -> bytes:
        """The bytes written so far; the final byte's zero padding is counted as index bits."""
        self.counts[INDEX] += -len(self.bits) % 8
        return self.bits.tobytes()


class BitReader:
    """Reads what `BitWriter` wrote, counting bits per tag, with every length checked.

    Attributes:
      budget: the `Budget` that allocations not backed by the buffer's bits are charged to
        (default: `Budget.of(len(data))`).
    """

    def __init__(self, data: bytes, budget: Budget | None = None):
        self.budget = Budget.of(len(data)) if budget is None else budget
        self.bits = bitarray(endian="big")
        self.bits.frombytes(bytes(data))
        self.pos = 0
        self.counts = {VALUE: 0, INDEX: 0}

    @property
    def left(self) -> int:
        """Bits not read yet."""
        return len(self.bits) - self.pos

    def need(self, n: int, what: str) -> None:
        """Raise FormatError unless `n` more bits (n >= 0) are available for `what`."""
        if n < 0 or n > self.left:
            raise FormatError(
                f"truncated {what}: needs {n} bits at bit {self.pos}, {self.left} left"
            )

    def take(self, n: int, what: str, kind: str = INDEX) -> bitarray:
        """The next `n` bits."""
        self.need(n, what)
        out = self.bits[self.pos : self.pos + n]
        self.pos += n
        self.counts[kind] += n
        return out

    def uint(self, width: int, what: str, kind: str = INDEX) -> int:
        """An unsigned `width`-bit integer."""
        return ba2int(self.take(width, what, kind), signed=False) if width else 0

    def gamma(self, what: str, kind: str = INDEX, limit: int = 2**62) -> int:
        """An Elias-gamma coded integer x (see `BitWriter.gamma`); FormatError if x > limit."""
        first = self.bits.find(1, self.pos, min(len(self.bits), self.pos + MAX_GAMMA_BITS))
        if first < 0:
            raise FormatError(f"bad {what}: no valid integer code at bit {self.pos}")
        zeros = first - self.pos
        self.take(zeros, what, kind)
        x = self.uint(zeros + 1, what, kind) - 1
        if x > limit:
            raise FormatError(f"bad {what}: {x} exceeds the limit {limit}")
        return x

    def uints(self, count: int, width: int, what: str, kind: str = INDEX) -> np.ndarray:
        """`count` unsigned `width`-bit integers -> [count] (`uint_dtype(width)`)."""
        self.need(count * width, what)
        if width == 0:
            self.budget.entries(count, what)
        return unpack_uints(self.take(count * width, what, kind), count, width)

    def finish(self) -> None:
        """Raise FormatError unless only the final byte's zero padding is left."""
        if self.left >= 8 or self.bits[self.pos :].any():
            raise FormatError(f"{self.left} unexpected trailing bits after the encoding")
        self.counts[INDEX] += self.left
        self.pos = len(self.bits)
