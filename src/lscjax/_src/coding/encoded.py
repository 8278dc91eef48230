"""`Encoded`: one tensor's bytes plus their accounting, and the byte layout around the formats.

Bytes: a fixed 6-byte header, then a bit stream (big-endian bits, zero-padded to a byte):

* header: magic b"LC", version (1 byte), format id (1 byte, index in `formats.NAMES`), dtype id
  (1 byte, index in `values.DTYPES`), flags (1 byte: bits 0-1 the entropy id in
  ("none", "huffman", "ans", "context"), bit 2 set when the tensor holds the codes of a QArray,
  bit 3 set when its codebook is stored as a lattice).
* prefix (index bits): gamma(ndim), gamma(dim) for each axis; for integer (code) dtypes
  gamma(value width); for a QArray: the method (2 bits, index in quant's METHODS), gamma(ndim)
  and gamma(dim) of the dense weight's shape, gamma(ndim) and gamma(dim) of the codebook, then
  the codebook: its float32 bit patterns, or for a lattice (a 1-D codebook of K entries
  ``float32(i - c) * step`` in float32 arithmetic, as a uniform grid through 0 such as
  `quant.trellis`'s) the step's float32 bit pattern and gamma(c), whichever is shorter.
* the format's body (see each format's module).

gamma(x) is the Elias-gamma code of x + 1. Every bit after the header is counted in `value_bits`
or `index_bits` (padding as index bits): ``8 * len(to_bytes()) == total_bits + 8 * HEADER_BYTES``.
"""

import dataclasses
import math

import numpy as np

from lscjax._src.coding.bitstream import INDEX, BitReader, BitWriter
from lscjax._src.coding.budget import Budget
from lscjax._src.coding.entropy import ENTROPIES, index_entropy
from lscjax._src.coding.formats import FORMATS, NAMES
from lscjax._src.coding.validate import (
    MAX_NDIM,
    check_codes_header,
    check_shape,
)
from lscjax._src.coding.values import ValueCodec, dtype_from_id, dtype_id, is_code_dtype
from lscjax._src.errors import FormatError
from lscjax._src.quant.qarray import METHODS, check_codes

MAGIC = b"LC"
VERSION = 1
HEADER_BYTES = 6
QARRAY_FLAG = 4
LATTICE_FLAG = 8


def lattice_of(codebook: np.ndarray) -> tuple[np.float32, int] | None:
    """(step, c) when the codebook float32 [K] is bit for bit ``float32(i - c) * step`` (i in
    [0, K)) and that form is shorter than the entries, else None."""
    if codebook.ndim != 1 or codebook.size < 2:
        return None
    zeros = np.flatnonzero(codebook.view(np.uint32) == 0)  # +0.0 exactly
    if zeros.size != 1:
        return None
    c = int(zeros[0])
    step = codebook[c + 1] if c + 1 < codebook.size else -codebook[c - 1]
    grid = lattice(step, c, codebook.size)
    if not np.array_equal(grid.view(np.uint32), codebook.view(np.uint32)):
        return None
    return step, c


def lattice(step, c: int, k: int) -> np.ndarray:
    """The lattice codebook float32 [k]: ``float32(i - c) * step`` in float32 arithmetic."""
    return (np.arange(k, dtype=np.int64) - c).astype(np.float32) * np.float32(step)


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The QArray facts stored beside its codes.

    Attributes:
      method: "kmeans" | "binarize" | "product" | "residual".
      bits: bits per code.
      shape: the dense weight's shape.
      codebook: float32 array (shape per the QArray convention).
    """

    method: str
    bits: int
    shape: tuple
    codebook: np.ndarray = dataclasses.field(compare=False)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One encoded tensor (host side).

    Attributes:
      format: the storage format name (`formats.NAMES`).
      shape: the encoded array's shape (a QArray's codes shape).
      dtype: the encoded array's NumPy dtype (codes: uint8 / uint16).
      options: the resolved options: "entropy" and the format's own ("k", "block", ...).
      payload: the bytes after the fixed header.
      value_bits: bits spent on values (weights or codes, raw or entropy coded).
      index_bits: every other bit after the header: shape, bitmasks, offsets, index streams,
        code tables, codebooks, byte padding.
      quantized: the QArray facts when the codes of a QArray were encoded, else None.
      decoded: set by `from_bytes`: (positions int64 [m] or None for all elements, the values'
        unsigned bit patterns [m]), which `decode` scatters; None for a fresh `encode`.
      kept: set by `encode`: the non-zero weights of the encoded tensor (`codec.kept_count`),
        counted on the array it was given; None after `from_bytes` (counted from `decoded`).
    """

    format: str
    shape: tuple
    dtype: np.dtype
    options: dict
    payload: bytes = dataclasses.field(repr=False)
    value_bits: int
    index_bits: int
    quantized: Quantized | None = None
    decoded: tuple | None = dataclasses.field(default=None, repr=False, compare=False)
    kept: int | None = dataclasses.field(default=None, compare=False)

    @property
    def total_bits(self) -> int:
        """value_bits + index_bits: everything but the fixed HEADER_BYTES header."""
        return self.value_bits + self.index_bits

    @property
    def entropy(self) -> str:
        """The entropy stage: "none" | "huffman" | "ans" | "context"."""
        return self.options["entropy"]

    def to_bytes(self) -> bytes:
        """The self-contained bytes: header + payload."""
        flags = ENTROPIES.index(self.entropy) | (QARRAY_FLAG if self.quantized else 0)
        if self.quantized is not None and lattice_of(self.quantized.codebook) is not None:
            flags |= LATTICE_FLAG
        header = MAGIC + bytes([VERSION, NAMES.index(self.format), dtype_id(self.dtype), flags])
        return header + self.payload

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int | None = None) -> "Encoded":
        """Parse and validate bytes from `to_bytes`.

        Args:
          data: the bytes.
          max_bytes: the reading budget (`budget.Budget`): bytes the declared arrays may take,
            the decoded array included. Default: `budget.default_max_bytes(len(data))`.

        Raises:
          FormatError: anything malformed (truncated, corrupted, foreign, unknown version,
            inconsistent header), or declared sizes past `max_bytes`.
        """
        return parse(data, Budget.of(len(data), max_bytes))

    def reader(self) -> tuple[BitReader, ValueCodec]:
        """A reader positioned at the format body, and the value codec (for format readers
        such as `lsc.decode_blocks`)."""
        r = BitReader(self.payload)
        q = self.quantized
        has_lattice = q is not None and lattice_of(q.codebook) is not None
        _, width, _ = read_prefix(r, self.dtype, q is not None, has_lattice)
        return r, ValueCodec(width, self.dtype, self.entropy)


def dense_shape(data: bytes, budget: Budget) -> tuple:
    """The dense shape of the tensor that `Encoded.to_bytes` bytes hold (a QArray's weight
    shape, else the array's), from the header and prefix alone (the body is not read)."""
    *_, shape, _, quantized = _prefix(bytes(data), budget)
    return tuple(quantized.shape if quantized is not None else shape)


def _prefix(data: bytes, budget: Budget) -> tuple:
    """(format name, dtype, entropy, a reader at the body, shape, value width, Quantized or
    None) of the checked header and prefix of `data`."""
    if len(data) < HEADER_BYTES or data[:2] != MAGIC:
        raise FormatError("not an lscjax encoding: missing the b'LC' header")
    version, format_id, dtype_index, flags = data[2:HEADER_BYTES]
    if version != VERSION:
        raise FormatError(f"unsupported encoding version {version} (this reader: {VERSION})")
    lattice_bit = bool(flags & LATTICE_FLAG)
    if (
        format_id >= len(NAMES)
        or flags & 3 >= len(ENTROPIES)
        or flags >> 4
        or (lattice_bit and not flags & QARRAY_FLAG)
    ):
        raise FormatError(f"unknown format id {format_id} or flags {flags:#x}")
    dtype = dtype_from_id(dtype_index)
    r = BitReader(data[HEADER_BYTES:], budget)
    prefix = read_prefix(r, dtype, bool(flags & QARRAY_FLAG), lattice_bit)
    return NAMES[format_id], dtype, ENTROPIES[flags & 3], r, *prefix


def parse(data: bytes, budget: Budget) -> Encoded:
    """`Encoded.from_bytes`, charging `budget` (shared by the sections of one file)."""
    data = bytes(data)
    fmt, dtype, entropy, r, shape, width, quantized = _prefix(data, budget)
    n = math.prod(shape)
    budget.charge(n * dtype.itemsize, f"the decoded array {shape} of {dtype.name}")
    values = ValueCodec(width, dtype, entropy)
    positions, vals, options = FORMATS[fmt].read(r, shape, n, values, dtype, index_entropy(entropy))
    r.finish()
    if quantized is not None:
        q = quantized
        check_codes("codes", vals, q.method, q.codebook.shape, FormatError)
    return Encoded(
        fmt,
        shape,
        dtype,
        {"entropy": entropy, **options},
        data[HEADER_BYTES:],
        r.counts["value"],
        r.counts["index"],
        quantized,
        (positions, vals),
    )


def write_shape(w: BitWriter, shape: tuple) -> None:
    """gamma(ndim), then gamma(dim) per axis."""
    w.gamma(len(shape))
    for dim in shape:
        w.gamma(dim)


def read_shape(r: BitReader, what: str) -> tuple:
    """Inverse of `write_shape`, validated (`validate.check_shape`)."""
    ndim = r.gamma(f"{what} rank", limit=MAX_NDIM)
    return check_shape(tuple(r.gamma(f"{what} dimension") for _ in range(ndim)), what)


def write_prefix(w: BitWriter, shape: tuple, dtype, width: int, quantized) -> None:
    """Write the prefix (module docstring)."""
    write_shape(w, shape)
    if is_code_dtype(dtype):
        w.gamma(width)
    if quantized is not None:
        w.uint(METHODS.index(quantized.method), 2)
        write_shape(w, quantized.shape)
        write_shape(w, quantized.codebook.shape)
        grid = lattice_of(quantized.codebook)
        if grid is None:
            w.uints(quantized.codebook.reshape(-1).view(np.uint32), 32, INDEX)
        else:
            w.uint(int(np.float32(grid[0]).view(np.uint32)), 32, INDEX)
            w.gamma(grid[1], INDEX)


def read_prefix(r: BitReader, dtype, has_qarray: bool, has_lattice: bool = False):
    """-> (shape, value width, Quantized or None), validated."""
    shape = read_shape(r, "shape")
    width = 8 * dtype.itemsize
    if is_code_dtype(dtype):
        width = r.gamma("value width", limit=width)
        if width < 1:
            raise FormatError("bad value width 0")
    quantized = None
    if has_qarray:
        method = r.uint(2, "quantization method")
        dense_shape = read_shape(r, "dense shape")
        book_shape = read_shape(r, "codebook shape")
        if has_lattice:
            if len(book_shape) != 1 or book_shape[0] < 2:
                raise FormatError(f"bad lattice codebook of shape {book_shape}")
            step = np.uint32(r.uint(32, "codebook step")).view(np.float32)
            c = r.gamma("codebook zero", limit=book_shape[0] - 1)
            r.budget.entries(book_shape[0], "codebook")
            codebook = lattice(step, c, book_shape[0])
            if lattice_of(codebook) is None:  # what the writer would not have stored so
                raise FormatError("bad lattice codebook: not a lattice through one +0.0")
        else:
            book = r.uints(math.prod(book_shape), 32, "codebook").astype(np.uint32)
            codebook = book.view(np.float32).reshape(book_shape)
        quantized = Quantized(METHODS[method], width, dense_shape, codebook)
        check_codes_header(
            quantized.method, width, dense_shape, shape, dtype, codebook, "QArray header"
        )
    return shape, width, quantized
