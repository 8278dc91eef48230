"""Element types and the value stream: raw bit patterns, or entropy-coded integer codes.

Values are handled as their raw bit patterns (an unsigned view of the same item size), so NaN
payloads, -0.0, infinities and denormals survive bit for bit. An element is "zero" when all its
bits are zero: -0.0 is a non-zero value and is stored.

Float values are stored raw, ``8 * itemsize`` bits each. Integer and bool arrays are codes: they
are stored in `width` bits, the bit length of the largest code (at least 1) unless the quantizer's
`bits` is given, and with `entropy` "huffman", "ans" or "context" (and width <= 16) they are
entropy coded; the code table (for "context": the context model, `coding.context`) is metadata
(index bits).
"""

import ml_dtypes
import numpy as np

from lscjax._src.coding.bitstream import INDEX, VALUE, BitReader, BitWriter
from lscjax._src.coding.context import ContextCoder
from lscjax._src.coding.entropy import SymbolCoder
from lscjax._src.errors import FormatError, LscError

DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
)
MAX_CODE_ALPHABET_BITS = 16


def dtype_by_name(name: str) -> np.dtype:
    """NumPy dtype for one of DTYPES (bfloat16 through ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def dtype_id(dtype) -> int:
    """Index of `dtype` in DTYPES; LscError for an unsupported dtype."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise LscError(f"unsupported dtype {name!r}; supported: {DTYPES}")
    return DTYPES.index(name)


def dtype_from_id(index: int) -> np.dtype:
    """Inverse of `dtype_id`; FormatError for an unknown id."""
    if not 0 <= index < len(DTYPES):
        raise FormatError(f"unknown dtype id {index}")
    return dtype_by_name(DTYPES[index])


def is_code_dtype(dtype) -> bool:
    """True for integer and bool dtypes (quantization codes), False for floats."""
    return not np.issubdtype(np.dtype(dtype), np.floating) and np.dtype(dtype).name != "bfloat16"


def bit_view(array: np.ndarray) -> np.ndarray:
    """The raw bit patterns of `array`: unsigned, same item size, flattened (C order) [n]."""
    array = np.ascontiguousarray(array)
    return array.reshape(-1).view(f"u{array.dtype.itemsize}")


def natural_width(bits: np.ndarray, dtype) -> int:
    """Value width for the bit patterns `bits` [n]: 8 * itemsize for floats, else the code width."""
    if not is_code_dtype(dtype):
        return 8 * np.dtype(dtype).itemsize
    return max(1, int(bits.max()).bit_length() if bits.size else 1)


class ValueCodec:
    """Writes and reads the value stream of one tensor.

    Attributes:
      width: bits per raw value.
      entropy: "none" | "huffman" | "ans" | "context"; applies only to codes of width <= 16.
      period: for "context", the codes per stream row that the writer uses (the tensor's last
        dimension); the reader reads it from the stream.
    """

    def __init__(self, width: int, dtype, entropy: str, period: int = 1):
        self.width = width
        self.period = period
        self.coded = is_code_dtype(dtype) and entropy != "none" and width <= MAX_CODE_ALPHABET_BITS
        self.entropy = entropy if self.coded else "none"

    def write(self, w: BitWriter, values: np.ndarray) -> None:
        """Write values (unsigned bit patterns [n], each < 2**width)."""
        if not self.coded:
            w.uints(values, self.width, VALUE)
            return
        if self.entropy == "context":
            coder = ContextCoder.fit(self.width, values.astype(np.int64), self.period)
            coder.write(w, values.astype(np.int64))
            return
        hist = np.bincount(values.astype(np.int64), minlength=2**self.width)
        coder = SymbolCoder.fit(self.entropy, self.width, hist)
        coder.write_table(w, INDEX)
        coder.write(w, values.astype(np.int64), VALUE)

    def read(self, r: BitReader, count: int, dtype: np.dtype) -> np.ndarray:
        """Read `count` values -> unsigned bit patterns [count] of `dtype`'s item size."""
        unsigned = np.dtype(f"u{dtype.itemsize}")
        if not self.coded:
            return r.uints(count, self.width, "values", VALUE).astype(unsigned)
        if self.entropy == "context":
            return ContextCoder.read(r, self.width, count, "value code").astype(unsigned)
        coder = SymbolCoder.read_table(r, self.entropy, self.width, INDEX, "value code")
        return coder.read(r, count, VALUE, "values").astype(unsigned)
