"""The entropy stage: a stream of integer symbols stored raw, canonical-Huffman or rANS coded.

* ``"none"``: every symbol in `alphabet_bits` bits.
* ``"huffman"``: canonical Huffman (Deep Compression's choice), encoded and decoded by bitarray's
  C routines. Table: the set of present symbols, then one code length per present symbol; the
  codes are assigned canonically (by length, then symbol), so the lengths determine them.
* ``"ans"``: rANS (constriction's `AnsCoder`, 32-bit words) with a categorical model whose
  probabilities are proportional to ``2 ** (q / 4)``, q = round(4 log2(count)) stored per present
  symbol (a quarter-octave quantized histogram, `ans_model`). Stream: the word count, then the
  words; a single present symbol needs no stream at all.
* ``"context"``: integer codes (the value stream) with one rANS model per context, contexts from
  row and column classes (`coding.context`); index symbols as "ans".

Tables are metadata: callers tag them as index bits. Table layout: gamma(number of present
symbols), one flag bit (1: a presence bitmask over the whole alphabet; 0: a list of symbols in
`alphabet_bits` bits each, whichever is shorter), gamma(weight width), the weights.
"""

import itertools
from collections.abc import Iterator

import constriction
import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode, canonical_huffman

from lscjax._src import ans_model, parallel
from lscjax._src.coding.bitstream import BitReader, BitWriter, gamma_bits
from lscjax._src.errors import FormatError, LscError
from lscjax._src.parallel import elementwise

ENTROPIES = ("none", "huffman", "ans", "context")
ANS_STEPS_PER_OCTAVE = ans_model.STEPS_PER_OCTAVE
ANS_WORD_BITS = 32
ANS_ROUNDING = 2.0**-20
"""Bound on how far constriction's fixed-point model moves one probability (its precision is
24 bits; padded)."""
MAX_CODE_LENGTH = 63


def check_entropy(entropy: str) -> str:
    """Raise LscError unless `entropy` is one of ENTROPIES."""
    if entropy not in ENTROPIES:
        raise LscError(f"entropy must be one of {ENTROPIES}, got {entropy!r}")
    return entropy


def index_entropy(entropy: str) -> str:
    """The entropy stage of index symbols: "context" models the value codes only and codes the
    index streams with "ans"."""
    return "ans" if entropy == "context" else entropy


def subset_bits(alphabet_bits: int, size: int) -> tuple[bool, int]:
    """(as a bitmask?, bits) of a set of `size` symbols of `alphabet_bits` bits: a presence
    bitmask over the alphabet or a list, whichever is shorter (the flag bit not counted)."""
    as_mask = 2**alphabet_bits <= size * alphabet_bits
    return as_mask, 2**alphabet_bits if as_mask else size * alphabet_bits


def write_subset(w: BitWriter, alphabet_bits: int, symbols: np.ndarray, kind: str) -> None:
    """Write a set of symbols int [m] (ascending): gamma(m), the flag bit, bitmask or list."""
    w.gamma(symbols.size, kind)
    as_mask, _ = subset_bits(alphabet_bits, symbols.size)
    w.uint(int(as_mask), 1, kind)
    if as_mask:
        present = np.zeros(2**alphabet_bits, np.uint8)
        present[symbols] = 1
        w.uints(present, 1, kind)
    else:
        w.uints(symbols, alphabet_bits, kind)


def read_subset(r: BitReader, alphabet_bits: int, kind: str, what: str) -> np.ndarray:
    """Read a set written by `write_subset` -> int64 [m] ascending, validated."""
    size = r.gamma(f"{what} table size", kind, limit=2**alphabet_bits)
    if r.uint(1, f"{what} table flag", kind):
        r.need(2**alphabet_bits, f"{what} symbol bitmask")
        symbols = np.flatnonzero(r.uints(2**alphabet_bits, 1, f"{what} symbols", kind))
        if symbols.size != size:
            raise FormatError(f"bad {what} table: {symbols.size} symbols, header says {size}")
        return symbols.astype(np.int64)
    symbols = r.uints(size, alphabet_bits, f"{what} symbols", kind).astype(np.int64)
    if np.any(np.diff(symbols) <= 0):
        raise FormatError(f"bad {what} table: symbols not strictly ascending")
    return symbols


def huffman_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths int64 [m] for symbol counts int [m] (all > 0); one symbol gets 1 bit."""
    codes, _, _ = canonical_huffman(dict(enumerate(counts.tolist())))
    return np.array([len(codes[i]) for i in range(len(counts))], np.int64)


def canonical_order(symbols: np.ndarray, lengths: np.ndarray):
    """(count per length [max+1], symbols sorted by (length, symbol)): bitarray's canonical tables."""
    order = np.lexsort((symbols, lengths))
    count = np.bincount(lengths, minlength=int(lengths.max()) + 1 if lengths.size else 1)
    return count.tolist(), symbols[order].tolist()


def canonical_codes(symbols: np.ndarray, lengths: np.ndarray) -> dict:
    """{symbol: bitarray code}: the canonical Huffman code for these lengths (DEFLATE's rule)."""
    count, ordered = canonical_order(symbols, lengths)
    codes, code, i = {}, 0, 0
    for length in range(1, len(count)):
        for _ in range(count[length]):
            word = bitarray(format(code, f"0{length}b"), endian="big")
            codes[ordered[i]] = word
            code, i = code + 1, i + 1
        code <<= 1
    return codes


def joined(pieces) -> np.ndarray:
    """int64 [sum of sizes]: the pieces (int arrays) one after the other; empty for none."""
    return np.concatenate([np.zeros(0, np.int64), *pieces])


class SymbolCoder:
    """One stream's code: `entropy`, `alphabet_bits`, present symbols and their weights.

    Attributes:
      entropy: "none" | "huffman" | "ans".
      alphabet_bits: symbols are integers in [0, 2**alphabet_bits).
      symbols: int64 [m], the present symbols, ascending (empty for "none").
      weights: int64 [m]; Huffman code lengths, or rANS quarter-octave log-counts.
    """

    def __init__(self, entropy: str, alphabet_bits: int, symbols, weights):
        self.entropy = entropy
        self.alphabet_bits = alphabet_bits
        self.symbols = np.asarray(symbols, np.int64)
        self.weights = np.asarray(weights, np.int64)

    @classmethod
    def fit(cls, entropy: str, alphabet_bits: int, hist: np.ndarray) -> "SymbolCoder":
        """The code for a symbol histogram int [2**alphabet_bits] (or shorter)."""
        symbols = np.flatnonzero(hist)
        counts = np.asarray(hist)[symbols]
        if entropy == "huffman" and symbols.size:
            weights = huffman_lengths(counts)
        elif entropy == "ans" and symbols.size:
            weights = ans_model.log_weights(counts).astype(np.int64)
        else:
            weights = np.zeros(0 if entropy == "none" else symbols.size, np.int64)
        return cls(entropy, alphabet_bits, symbols if entropy != "none" else [], weights)

    # -- sizes --------------------------------------------------------------------------------

    def _weight_width(self) -> int:
        return int(self.weights.max()).bit_length() if self.weights.size else 0

    def table_bits(self) -> int:
        """Bits that `write_table` writes."""
        if self.entropy == "none":
            return 0
        width = self._weight_width()
        return (
            gamma_bits(self.symbols.size)
            + 1
            + subset_bits(self.alphabet_bits, self.symbols.size)[1]
            + gamma_bits(width)
            + width * self.symbols.size
        )

    def _probabilities(self) -> np.ndarray:
        return ans_model.probabilities(self.weights)

    def stream_bits(self, hist: np.ndarray) -> int:
        """Bits of the stream for symbols with histogram `hist` (exact; rANS: estimated)."""
        hist = np.asarray(hist)
        if self.entropy == "none":
            return int(hist.sum()) * self.alphabet_bits
        counts = hist[self.symbols] if self.symbols.size else np.zeros(0, np.int64)
        if self.entropy == "huffman":
            return int((counts * self.weights).sum())
        if self.symbols.size <= 1:
            return 0
        info = -(counts * np.log2(self._probabilities())).sum()
        words = int(np.ceil(info / ANS_WORD_BITS)) + 1 if counts.sum() else 0
        return gamma_bits(words) + ANS_WORD_BITS * words

    def code_lengths(self) -> np.ndarray:
        """Huffman: int64 [2**alphabet_bits] code length of every symbol (0 when absent)."""
        out = np.zeros(2**self.alphabet_bits, np.int64)
        out[self.symbols] = self.weights
        return out

    # -- tables -------------------------------------------------------------------------------

    def write_table(self, w: BitWriter, kind: str) -> None:
        """Write the table (nothing for "none")."""
        if self.entropy == "none":
            return
        write_subset(w, self.alphabet_bits, self.symbols, kind)
        width = self._weight_width()
        w.gamma(width, kind)
        w.uints(self.weights, width, kind)

    @classmethod
    def read_table(
        cls, r: BitReader, entropy: str, alphabet_bits: int, kind: str, what: str
    ) -> "SymbolCoder":
        """Read a table written by `write_table`, validating it."""
        if entropy == "none":
            return cls(entropy, alphabet_bits, [], [])
        symbols = read_subset(r, alphabet_bits, kind, what)
        size = symbols.size
        width = r.gamma(f"{what} weight width", kind, limit=MAX_CODE_LENGTH)
        weights = r.uints(size, width, f"{what} weights", kind).astype(np.int64)
        coder = cls(entropy, alphabet_bits, symbols, weights)
        if entropy == "huffman" and size:
            kraft = np.exp2(-weights[weights > 0].astype(float)).sum()
            if weights.min() < 1 or weights.max() > MAX_CODE_LENGTH or kraft > 1.0:
                raise FormatError(f"bad {what} table: code lengths violate Kraft's inequality")
        return coder

    # -- streams ------------------------------------------------------------------------------

    def encode(self, symbols: np.ndarray) -> bitarray:
        """Huffman: the code bits of symbols int [n] (all present in the table)."""
        out = bitarray(endian="big")
        if symbols.size:
            out.encode(canonical_codes(self.symbols, self.weights), symbols.tolist())
        return out

    def decode(self, bits: bitarray, what: str, count: int | None = None) -> np.ndarray:
        """Huffman: decode `count` symbols (None: all of `bits`) -> int64 [count]."""
        if not self.symbols.size:
            if count or len(bits):
                raise FormatError(f"bad {what}: symbols coded with an empty table")
            return np.zeros(0, np.int64)
        table = canonical_order(self.symbols, self.weights)
        try:
            symbols = canonical_decode(bits, *table)
            if count is None:
                return np.fromiter(symbols, np.int64)
            return np.fromiter(itertools.islice(symbols, count), np.int64, count=count)
        except ValueError as err:
            raise FormatError(f"bad {what}: {err}") from None

    def write(self, w: BitWriter, symbols: np.ndarray, kind: str) -> None:
        """Write the stream of symbols int [n] (without its length: the reader is told `n`)."""
        if self.entropy == "none":
            w.uints(symbols, self.alphabet_bits, kind)
        elif self.entropy == "huffman":
            w.bitarray(self.encode(symbols), kind)
        elif symbols.size and self.symbols.size > 1:
            model = constriction.stream.model.Categorical(self._probabilities(), perfect=False)
            coder = constriction.stream.stack.AnsCoder()
            coder.encode_reverse(self._ranks(symbols), model)
            words = coder.get_compressed()
            w.gamma(words.size, kind)
            w.uints(words, ANS_WORD_BITS, kind)

    def _ranks(self, symbols: np.ndarray) -> np.ndarray:
        """Each symbol's index among the present symbols, int32 [n], for symbols int [n] (all
        present): a lookup table, or the symbols themselves when every one is present."""
        if self.symbols.size == 2**self.alphabet_bits:
            return symbols.astype(np.int32, copy=False)
        lookup = np.zeros(2**self.alphabet_bits, np.int32)
        lookup[self.symbols] = np.arange(self.symbols.size, dtype=np.int32)
        return elementwise(lambda part: lookup[part], symbols, dtype=np.int32)

    def read(self, r: BitReader, count: int, kind: str, what: str) -> np.ndarray:
        """Read a stream of `count` symbols -> int64 [count]."""
        return joined(self.read_pieces(r, count, kind, what))

    def read_pieces(self, r: BitReader, count: int, kind: str, what: str) -> Iterator[np.ndarray]:
        """Read a stream of `count` symbols: its bits are taken from `r` now; the iterator
        gives the symbols int64, in order, in pieces (rANS: `parallel.SLICE_ELEMENTS` decoded
        at a time, so a long stream never has all its symbols in memory at once)."""
        if self.entropy == "none":
            return iter([r.uints(count, self.alphabet_bits, what, kind).astype(np.int64)])
        if count == 0:
            return iter([])
        if self.entropy == "huffman":
            r.need(count, what)  # every code is at least one bit
            symbols = self.decode(r.bits[r.pos :], what, count)
            r.take(int(self.code_lengths()[symbols].sum()), what, kind)
            return iter([symbols])
        if not self.symbols.size:
            raise FormatError(f"bad {what}: symbols coded with an empty table")
        r.budget.entries(count, what)  # before the Rust coder allocates `count` symbols
        if self.symbols.size == 1:
            return iter([np.full(count, self.symbols[0], np.int64)])
        n_words = r.gamma(f"{what} length", kind, limit=r.left // ANS_WORD_BITS)
        words = r.uints(n_words, ANS_WORD_BITS, what, kind).astype(np.uint32)
        probabilities = self._probabilities()
        # Every symbol carries at least -log2(p_max) bits (p_max padded for the model's
        # fixed-point rounding): more symbols than the words can hold is malformed.
        p_max = probabilities.max() + probabilities.size * ANS_ROUNDING
        if p_max < 1 and count * -np.log2(p_max) > 2 * ANS_WORD_BITS * (n_words + 2):
            raise FormatError(f"bad {what}: {count} symbols cannot fit in {n_words} words")
        model = constriction.stream.model.Categorical(probabilities, perfect=False)
        coder = constriction.stream.stack.AnsCoder(words)

        def pieces() -> Iterator[np.ndarray]:
            piece = parallel.SLICE_ELEMENTS
            for start in range(0, count, piece):
                try:
                    index = coder.decode(model, min(piece, count - start))
                except ValueError as err:
                    raise FormatError(f"bad {what}: {err}") from None
                yield self.symbols[index]

        return pieces()
