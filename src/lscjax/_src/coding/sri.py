"""Signed Relative Index ("sri"), lscjax's definition (docs/format.md has the worked example).

Each entry is a signed k-bit integer e (two's complement), M = 2**(k - 1):

* e >= 0 (0 .. M - 1): skip e zeros, then one non-zero value (taken from the value stream);
* e < 0 (-1 .. -M): skip (-e) * M zeros, no value.

A gap of z zeros before a non-zero is written as q = z // M zero runs, q // M entries of -M
(M * M zeros each) and one entry -(q mod M) when that is non-zero, then the entry z mod M. A run
of M**2 zeros costs one entry: long zero runs never cost filler values. Trailing zeros are implied
by the length. k is chosen per tensor by minimizing the total bits (entropy stage included) unless
given.

Body: gamma(k), gamma(entries), the entry symbols (k-bit two's complement, entropy stage), the
values.
"""

from collections.abc import Iterable

import numpy as np

from lscjax._src.coding.bitstream import INDEX, BitReader, BitWriter, gamma_bits
from lscjax._src.coding.entropy import SymbolCoder, joined
from lscjax._src.coding.layout import check_positions, gap_table, gaps, segment_ends
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError, LscError
from lscjax._src.parallel import row_spans, shared_map

K_RANGE = range(1, 17)


def check_k(k) -> int:
    """LscError unless k is an int in K_RANGE."""
    if isinstance(k, bool) or not isinstance(k, int) or k not in K_RANGE:
        raise LscError(f"sri: k must be an int in [1, 16], got {k!r}")
    return k


def _split(z: np.ndarray, k: int):
    half = 2 ** (k - 1)
    runs = z >> (k - 1)
    return half, runs // half, runs % half, z & (half - 1)


def entry_counts(z: np.ndarray, k: int) -> np.ndarray:
    """Entries int64 [m] that each gap int64 [m] takes."""
    _, full, part, _ = _split(z, k)
    return full + (part > 0) + 1


def entries(z: np.ndarray, k: int) -> np.ndarray:
    """SRI entry symbols int32 [e] (k-bit two's complement) of gaps int64 [m], filled in slices
    of the gaps (`parallel.shared_map`)."""
    half, full, part, rest = _split(z, k)
    ends = segment_ends(full + (part > 0) + 1)  # one past each gap's last entry
    symbols = np.empty(int(ends[-1]) if ends.size else 0, np.int32)

    def fill(span: slice) -> None:
        lo = int(ends[span.start - 1]) if span.start else 0
        symbols[lo : ends[span.stop - 1]] = half
        last = ends[span] - 1
        symbols[last] = rest[span]
        has_part = part[span] > 0
        symbols[last[has_part] - 1] = 2**k - part[span][has_part]

    per_gap = symbols.size // max(z.size, 1)
    shared_map(fill, row_spans(z.size, max(per_gap, 1)))
    return symbols


def histogram(values: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Entry-symbol histogram int64 [2**k] of distinct gaps int64 [d] occurring counts [d] times."""
    half, full, part, rest = _split(values, k)
    hist = np.bincount(rest, weights=counts, minlength=2**k)
    hist[half] += (full * counts).sum()
    has_part = part > 0
    hist += np.bincount(2**k - part[has_part], weights=counts[has_part], minlength=2**k)[: 2**k]
    return hist.astype(np.int64)


def gap_code_bits(values: np.ndarray, coder: SymbolCoder) -> np.ndarray:
    """Huffman: code bits int64 [d] that each distinct gap int64 [d] takes."""
    k = coder.alphabet_bits
    lengths = coder.code_lengths()
    half, full, part, rest = _split(values, k)
    part_bits = np.where(part > 0, lengths[np.where(part > 0, 2**k - part, 0)], 0)
    return lengths[rest] + full * lengths[half] + part_bits


def choose_k(
    values: np.ndarray, counts: np.ndarray, entropy: str, k=None
) -> tuple[int, SymbolCoder]:
    """(k, its SymbolCoder) minimizing the index bits for distinct gaps [d] with counts [d].

    Cost = gamma(k) + gamma(entries) + table + stream; the value bits do not depend on k.
    """
    best = None
    for candidate in K_RANGE if k is None else (check_k(k),):
        hist = histogram(values, counts, candidate)
        coder = SymbolCoder.fit(entropy, candidate, hist)
        cost = gamma_bits(candidate) + gamma_bits(hist.sum()) + coder.table_bits()
        cost += coder.stream_bits(hist)
        if best is None or cost < best[0]:
            best = (cost, candidate, coder)
    return best[1], best[2]


def advances(symbols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions advanced int64 [e], carries-a-value bool [e]) of entry symbols int [e]."""
    half = 2 ** (k - 1)
    has_value = symbols < half
    return np.where(has_value, symbols + 1, (2**k - symbols) * half), has_value


def value_reaches(
    pieces: Iterable[np.ndarray], k: int, marks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk entry symbols given in consecutive pieces (int [e] in all), one piece in memory.

    Args:
      pieces: the entry symbols, in order.
      k: the entry width.
      marks: entry indices int64 [s], ascending, in [0, e].

    Returns:
      (the entry index int64 [m] of each value entry, its reach int64 [m]: the positions
      advanced up to and including it, the positions advanced before each mark int64 [s]).
    """
    index, reach, before = [], [], np.zeros(marks.size, np.int64)
    start = total = 0
    for symbols in pieces:
        step, has_value = advances(symbols, k)
        ends = np.cumsum(step) + total
        at = np.flatnonzero(has_value)
        index.append(at + start)
        reach.append(ends[at])
        inside = slice(*np.searchsorted(marks, [start, start + symbols.size]))
        before[inside] = (ends - step)[marks[inside] - start]
        start += symbols.size
        total = int(ends[-1]) if ends.size else total
    before[marks >= start] = total
    return joined(index), joined(reach), before


def write(
    w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str, *, k=None
) -> dict:
    """Write bit patterns [n] as SRI entries."""
    positions = np.flatnonzero(bits)
    z = gaps(positions)
    distinct, counts, _ = gap_table(z)
    k, coder = choose_k(distinct, counts, entropy, k)
    symbols = entries(z, k)
    w.gamma(k)
    w.gamma(symbols.size)
    coder.write_table(w, INDEX)
    coder.write(w, symbols, INDEX)
    values.write(w, bits[positions])
    return {"k": k}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (positions int64 [m], values [m], options)."""
    k = r.gamma("sri k", limit=K_RANGE.stop - 1)
    if k < 1:
        raise FormatError("bad sri k: 0")
    count = r.gamma("sri entry count", limit=n)
    coder = SymbolCoder.read_table(r, entropy, k, INDEX, "sri entry")
    _, reach, _ = value_reaches(
        coder.read_pieces(r, count, INDEX, "sri entries"), k, np.zeros(0, int)
    )
    positions = reach - 1
    check_positions(positions, n, "sri entries")
    return positions, values.read(r, positions.size, dtype), {"k": k}
