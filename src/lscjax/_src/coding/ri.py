"""Deep Compression's relative index ("ri"): k-bit gaps with filler zeros.

Each non-zero is stored as (gap, value): gap = the number of zeros since the previous stored entry
(k bits). A run of z zeros longer than 2**k - 1 first stores floor(z / 2**k) filler entries
(gap 2**k - 1, value zero: the filler occupies the zero at the end of its span), then the
remainder z mod 2**k. A non-zero at the exact position where a filler would go (z = 2**k - 1) is
an ordinary entry. Trailing zeros are implied by the shape.

Body: gamma(k), gamma(entries), the gap symbols (entropy stage), the values of all entries
(fillers included).
"""

import numpy as np

from lscjax._src.coding.bitstream import BitReader, BitWriter
from lscjax._src.coding.entropy import SymbolCoder
from lscjax._src.coding.layout import check_positions, gaps, segment_ends
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError, LscError

MAX_K = 16


def default_k(shape: tuple) -> int:
    """Deep Compression's index width: 8 bits for conv kernels (rank >= 3), 5 otherwise."""
    return 8 if len(shape) >= 3 else 5


def entries(z: np.ndarray, values: np.ndarray, k: int):
    """RI entries of gaps int64 [m] and values [m]: (gap symbols int64 [e], values [e])."""
    fillers = z >> k
    ends = segment_ends(fillers + 1) - 1
    symbols = np.full(int(ends[-1]) + 1 if ends.size else 0, 2**k - 1, np.int64)
    symbols[ends] = z & (2**k - 1)
    stored = np.zeros(symbols.size, values.dtype)
    stored[ends] = values
    return symbols, stored


def write(
    w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str, *, k=None
) -> dict:
    """Write bit patterns [n] as RI entries."""
    k = default_k(shape) if k is None else k
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise LscError(f"ri: k must be an int in [1, {MAX_K}], got {k!r}")
    positions = np.flatnonzero(bits)
    symbols, stored = entries(gaps(positions), bits[positions], k)
    coder = SymbolCoder.fit(entropy, k, np.bincount(symbols, minlength=2**k))
    w.gamma(k)
    w.gamma(symbols.size)
    coder.write_table(w, "index")
    coder.write(w, symbols, "index")
    values.write(w, stored)
    return {"k": k}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (positions int64 [e], values [e] (fillers decode as zeros), options)."""
    k = r.gamma("ri k", limit=MAX_K)
    if k < 1:
        raise FormatError("bad ri k: 0")
    count = r.gamma("ri entry count", limit=n)
    coder = SymbolCoder.read_table(r, entropy, k, "index", "ri gap")
    symbols = coder.read(r, count, "index", "ri gaps")
    positions = segment_ends(symbols + 1) - 1
    check_positions(positions, n, "ri gaps")
    return positions, values.read(r, count, dtype), {"k": k}
