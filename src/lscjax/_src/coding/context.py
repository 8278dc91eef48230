"""The "context" entropy stage of a code stream: one static rANS model per context.

The n codes of a stream are read as rows of `period` codes (the last row may be shorter; the
dense format of a matrix [..., C] has period C, so a stream row is a matrix row). Every row has a
row class in [0, 2**row_bits) and every column (position in the row) a column class in
[0, 2**col_bits); a code's context is (row class, column class), context index
``row_class * 2**col_bits + col_class``, and each context has its own categorical model, a
quarter-octave quantized histogram as in entropy "ans". Rows and columns of different scale
(weight matrices' input and output channels) then get models of their own. The contexts come
from positions only, so decoding is one vectorised rANS call per context.

The encoder tries every (row_bits, col_bits) in 0..MAX_CLASS_BITS and keeps the smallest
estimated size (0, 0 is the static model). Row classes are fitted on the rows' symbol
histograms alone (and column classes on the columns'): equal-size groups by the mean code length
under the static model, then `REFINE_STEPS` reassignments of every row to the class whose
model codes it in the fewest bits. The stream is read twice for the histograms and once per
configuration for its counts.

Stream (after the caller's symbol table is known to be of `alphabet_bits`-bit symbols):
gamma(m), the present symbols as in `entropy.SymbolCoder` (flag bit, bitmask or list); for m >= 2
then gamma(period), row_bits and col_bits (2 bits each), the row classes (row_bits each) and column
classes (col_bits each), gamma(weight width), per context one weight per present symbol (0: absent
in that context, else 1 + round(4 log2 count)), and one rANS stream (gamma(word count), 32-bit
words) holding the contexts one after another, context 0 first, each in stream order. A context
with one present symbol costs no stream bits. Tables and classes are index bits, the rANS stream
value bits.
"""

import math

import constriction
import numpy as np

from lscjax._src.coding.bitstream import INDEX, VALUE, BitReader, BitWriter, gamma_bits
from lscjax._src.coding.entropy import (
    ANS_ROUNDING,
    ANS_STEPS_PER_OCTAVE,
    ANS_WORD_BITS,
    MAX_CODE_LENGTH,
    read_subset,
    subset_bits,
    write_subset,
)
from lscjax._src.errors import FormatError

MAX_CLASS_BITS = 2
"""Row and column classes take at most this many bits: at most 4 x 4 = 16 contexts."""
REFINE_STEPS = 3
MAX_FIT_ENTRIES = 2**22
"""Bound on the histograms of the class fit ([rows or period, m]): past it, that axis gets no
classes."""


def _probabilities(weights: np.ndarray) -> np.ndarray:
    """Model probabilities float64 [K, m] of context weights int [K, m] (0: probability 0)."""
    top = weights.max(axis=1, keepdims=True)
    scaled = np.where(weights > 0, 2.0 ** ((weights - top) / ANS_STEPS_PER_OCTAVE), 0.0)
    return scaled / np.maximum(scaled.sum(axis=1, keepdims=True), 1e-300)


def _weights(counts: np.ndarray) -> np.ndarray:
    """Context weights int64 [K, m] of counts [K, m]: 0 for 0, else 1 + round(4 log2 count)."""
    safe = np.maximum(counts, 1)
    return np.where(
        counts > 0, 1 + np.rint(ANS_STEPS_PER_OCTAVE * np.log2(safe)).astype(np.int64), 0
    )


def _info_bits(counts: np.ndarray, weights: np.ndarray) -> float:
    """Information in bits of coding counts [K, m] with the models of weights [K, m]."""
    coded = (weights > 0).sum(axis=1) > 1
    p = _probabilities(weights[coded])
    c = counts[coded]
    return float(-(c * np.log2(np.where(c > 0, p, 1.0))).sum())


class ContextCoder:
    """The context model of one stream (module docstring).

    Attributes:
      alphabet_bits: symbols are integers in [0, 2**alphabet_bits).
      symbols: int64 [m], the present symbols, ascending.
      period: codes per stream row (>= 1).
      row_bits, col_bits: class bits (0..MAX_CLASS_BITS).
      row_classes: int64 [rows] (rows = ceil(n / period)); col_classes: int64 [period].
      weights: int64 [2**(row_bits + col_bits), m], per context one weight per present symbol.
    """

    def __init__(self, alphabet_bits, symbols, period, row_bits, col_bits, rows, cols, weights):
        self.alphabet_bits = alphabet_bits
        self.symbols = np.asarray(symbols, np.int64)
        self.period = period
        self.row_bits = row_bits
        self.col_bits = col_bits
        self.row_classes = np.asarray(rows, np.int64)
        self.col_classes = np.asarray(cols, np.int64)
        self.weights = np.asarray(weights, np.int64)

    # -- fitting ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, alphabet_bits: int, symbols: np.ndarray, period: int) -> "ContextCoder":
        """The smallest context model (by estimated size) for symbols int [n].

        Args:
          alphabet_bits: symbols lie in [0, 2**alphabet_bits).
          symbols: the stream, int [n].
          period: codes per stream row, clipped to [1, max(n, 1)].
        """
        symbols = np.asarray(symbols, np.int64)
        present = np.flatnonzero(np.bincount(symbols, minlength=1))
        lookup = np.zeros(present[-1] + 1 if present.size else 1, np.int64)
        lookup[present] = np.arange(present.size)
        index = lookup[symbols]
        n, m = index.size, present.size
        period = min(max(int(period), 1), max(n, 1))
        if m <= 1:
            return cls(alphabet_bits, present, period, 0, 0, [], [], np.zeros((1, m), np.int64))
        pos = np.arange(n)
        row, col = pos // period, pos % period
        n_rows = -(-n // period)
        lengths = -np.log2(np.bincount(index, minlength=m) / n)
        classes = {"rows": {0: np.zeros(n_rows, np.int64)}, "cols": {0: np.zeros(period, np.int64)}}
        for axis, ids, size in (("rows", row, n_rows), ("cols", col, period)):
            if size * m > MAX_FIT_ENTRIES:
                continue
            hist = np.bincount(ids * m + index, minlength=size * m).reshape(size, m)
            for bits in range(1, MAX_CLASS_BITS + 1):
                classes[axis][bits] = _cluster(hist, 2**bits, lengths)
        best, best_bits = None, math.inf
        for row_bits, rows in classes["rows"].items():
            for col_bits, cols in classes["cols"].items():
                k_c = 2**col_bits
                contexts = rows[row] * k_c + cols[col]
                counts = _context_counts(index, m, contexts, 2**row_bits * k_c)
                coder = cls(
                    alphabet_bits,
                    present,
                    period,
                    row_bits,
                    col_bits,
                    rows if row_bits else [],
                    cols if col_bits else [],
                    _weights(counts),
                )
                bits = coder.size_bits(counts, n)
                if bits < best_bits:
                    best, best_bits = coder, bits
        return best

    def contexts(self, n: int) -> np.ndarray:
        """Context index int64 [n] of each stream position."""
        pos = np.arange(n)
        rows = self.row_classes[pos // self.period] if self.row_bits else 0
        cols = self.col_classes[pos % self.period] if self.col_bits else 0
        return np.broadcast_to(rows * 2**self.col_bits + cols, (n,)).astype(np.int64)

    # -- sizes --------------------------------------------------------------------------------

    def _weight_width(self) -> int:
        return int(self.weights.max()).bit_length() if self.weights.size else 0

    def table_bits(self, n: int) -> int:
        """Index bits of everything but the rANS stream, for a stream of n symbols."""
        m = self.symbols.size
        bits = gamma_bits(m) + 1 + subset_bits(self.alphabet_bits, m)[1]
        if m <= 1:
            return bits
        n_rows = -(-n // self.period)
        return (
            bits
            + gamma_bits(self.period)
            + 2 * 2
            + n_rows * self.row_bits
            + self.period * self.col_bits
            + gamma_bits(self._weight_width())
            + self._weight_width() * self.weights.size
        )

    def size_bits(self, counts: np.ndarray, n: int) -> int:
        """Estimated total bits of a stream of n symbols whose counts per context and
        present symbol are int [contexts, m] (rANS: from the model)."""
        info = _info_bits(counts, self.weights)
        words = int(np.ceil(info / ANS_WORD_BITS)) + 1 if info > 0 else 0
        return self.table_bits(n) + gamma_bits(words) + ANS_WORD_BITS * words

    # -- writing ------------------------------------------------------------------------------

    def write(self, w: BitWriter, symbols: np.ndarray) -> None:
        """Write the model and the stream of symbols int [n] (the ones it was fitted to)."""
        m = self.symbols.size
        write_subset(w, self.alphabet_bits, self.symbols, INDEX)
        if m <= 1:
            return
        n = symbols.size
        w.gamma(self.period, INDEX)
        w.uint(self.row_bits, 2, INDEX)
        w.uint(self.col_bits, 2, INDEX)
        w.uints(self.row_classes, self.row_bits, INDEX)
        w.uints(self.col_classes, self.col_bits, INDEX)
        width = self._weight_width()
        w.gamma(width, INDEX)
        w.uints(self.weights.reshape(-1), width, INDEX)
        index = np.searchsorted(self.symbols, symbols).astype(np.int32)
        contexts = self.contexts(n)
        order = np.argsort(contexts.astype(np.uint8), kind="stable")  # a radix sort
        bounds = np.searchsorted(contexts[order], np.arange(len(self.weights) + 1))
        coder = constriction.stream.stack.AnsCoder()
        probabilities = _probabilities(self.weights)
        for k in reversed(range(len(self.weights))):  # a stack: context 0 decodes first
            part = index[order[bounds[k] : bounds[k + 1]]]
            if part.size and (self.weights[k] > 0).sum() > 1:
                model = constriction.stream.model.Categorical(probabilities[k], perfect=False)
                coder.encode_reverse(part, model)
        words = coder.get_compressed()
        w.gamma(words.size, VALUE)
        w.uints(words, ANS_WORD_BITS, VALUE)

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def read(cls, r: BitReader, alphabet_bits: int, count: int, what: str) -> np.ndarray:
        """Read a model and stream of `count` symbols -> int64 [count], validating both.

        Raises:
          FormatError: malformed model or stream, or declared sizes past the reading budget.
        """
        symbols = read_subset(r, alphabet_bits, INDEX, what)
        m = symbols.size
        if count == 0 and m == 0:
            return np.zeros(0, np.int64)
        if m == 0:
            raise FormatError(f"bad {what}: {count} symbols coded with an empty table")
        r.budget.entries(count, what)  # before any array of `count` symbols
        if m == 1:
            return np.full(count, symbols[0], np.int64)
        period = r.gamma(f"{what} period", INDEX, limit=max(count, 1))
        if period < 1:
            raise FormatError(f"bad {what}: period 0")
        row_bits = r.uint(2, f"{what} row class bits", INDEX)
        col_bits = r.uint(2, f"{what} column class bits", INDEX)
        if max(row_bits, col_bits) > MAX_CLASS_BITS:
            raise FormatError(f"bad {what}: class bits above {MAX_CLASS_BITS}")
        n_rows = -(-count // period)
        rows = r.uints(n_rows, row_bits, f"{what} row classes", INDEX) if row_bits else []
        cols = r.uints(period, col_bits, f"{what} column classes", INDEX) if col_bits else []
        width = r.gamma(f"{what} weight width", INDEX, limit=MAX_CODE_LENGTH)
        n_contexts = 2 ** (row_bits + col_bits)
        weights = r.uints(n_contexts * m, width, f"{what} weights", INDEX).astype(np.int64)
        coder = cls(
            alphabet_bits,
            symbols,
            period,
            row_bits,
            col_bits,
            rows,
            cols,
            weights.reshape(n_contexts, m),
        )
        return coder._read_stream(r, count, what)

    def _read_stream(self, r: BitReader, count: int, what: str) -> np.ndarray:
        contexts = self.contexts(count)
        order = np.argsort(contexts.astype(np.uint8), kind="stable")  # a radix sort
        sizes = np.bincount(contexts, minlength=len(self.weights))
        present = (self.weights > 0).sum(axis=1)
        if np.any((sizes > 0) & (present == 0)):
            raise FormatError(f"bad {what}: symbols in a context with an empty table")
        n_words = r.gamma(f"{what} length", VALUE, limit=r.left // ANS_WORD_BITS)
        words = r.uints(n_words, ANS_WORD_BITS, what, VALUE).astype(np.uint32)
        probabilities = _probabilities(self.weights)
        coded = (sizes > 0) & (present > 1)
        # Every symbol carries at least -log2(p_max) bits (p_max padded for the model's
        # fixed-point rounding): more symbols than the words can hold is malformed.
        p_max = np.minimum(probabilities.max(axis=1) + self.symbols.size * ANS_ROUNDING, 1.0)
        least = float((sizes[coded] * -np.log2(p_max[coded])).sum())
        if least > 2 * ANS_WORD_BITS * (n_words + 2):
            raise FormatError(f"bad {what}: {count} symbols cannot fit in {n_words} words")
        index = np.zeros(count, np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        decoder = constriction.stream.stack.AnsCoder(words)
        for k in np.flatnonzero(sizes):
            where = order[bounds[k] : bounds[k + 1]]
            if present[k] == 1:
                index[where] = np.flatnonzero(self.weights[k])[0]
                continue
            model = constriction.stream.model.Categorical(probabilities[k], perfect=False)
            try:
                index[where] = decoder.decode(model, int(sizes[k]))
            except ValueError as err:
                raise FormatError(f"bad {what}: {err}") from None
        return self.symbols[index]


def _context_counts(index: np.ndarray, m: int, contexts: np.ndarray, n_contexts: int):
    """Counts int64 [n_contexts, m] of present-symbol indices [n] per context [n]."""
    flat = np.bincount(contexts * m + index, minlength=n_contexts * m)
    return flat.reshape(n_contexts, m)


def _cluster(hist: np.ndarray, k: int, lengths: np.ndarray) -> np.ndarray:
    """Classes int64 [N] in [0, k) of N rows (or columns) with symbol histograms int [N, m]:
    equal-size groups by the mean code length under the static model (`lengths` float [m]),
    then REFINE_STEPS reassignments of each to the class whose model codes it in fewest bits."""
    totals = np.maximum(hist.sum(axis=1), 1)
    classes = _rank_classes(hist @ lengths / totals, k)
    for _ in range(REFINE_STEPS):
        counts = np.stack([hist[classes == j].sum(axis=0) for j in range(k)])
        model = -np.log2((counts + 0.5) / (counts.sum(axis=1, keepdims=True) + 0.5 * hist.shape[1]))
        classes = (hist @ model.T).argmin(axis=1)
    return classes


def _rank_classes(score: np.ndarray, k: int) -> np.ndarray:
    """Classes int64 [len(score)] in [0, k): equal-size groups by the rank of score."""
    ranks = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    return ranks * k // max(score.size, 1)
