"""The "trellis" format: the codes of a trellis-quantized tensor as levels, one rANS model per
quantizer.

The codes c of width b of a tensor [..., C] are read as rows of C (chains); each is the
union-grid index m = c - M (M = 2**(b - 1) - 1) of dependent quantization (`quant.trellis`).
Along each row from state 0 the state machine gives each position's quantizer, and m its level
k (m = 2k in quantizer 0, 2k - sign(k) in quantizer 1), so k carries about one bit less than m.
The levels are coded with entropy "ans", one static model per quantizer: the quantizer of a
position is the context, known to the decoder from the levels before it. Decoding goes column
by column, every row at once: per column one rANS call per quantizer.

Body: for quantizers 0 and 1, the table of the level symbols k + K (K = (M + 1) // 2) as in
`entropy.SymbolCoder` (b-bit alphabet; index bits); then for each quantizer with two or more
present symbols its rANS stream (gamma(word count), 32-bit words; value bits). Codes that are
not trellis codes (a point outside its quantizer) cannot be written: quantize with
`lscjax.quant.rdq(..., grid="trellis")`.
"""

import constriction
import numpy as np

from lscjax._src import ans_model
from lscjax._src.coding.bitstream import INDEX, VALUE, BitReader, BitWriter
from lscjax._src.coding.entropy import ANS_WORD_BITS, SymbolCoder
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError, LscError
from lscjax._src.quant import trellis

QUANTIZERS = (0, 1)


def _alphabet(width: int) -> tuple[int, int]:
    """(K, alphabet bits) of the level symbols k + K for codes of `width` bits."""
    kmax = (trellis.center(width) + 1) // 2
    return kmax, max(1, (2 * kmax).bit_length())


def _rows(shape: tuple, n: int) -> tuple[int, int]:
    period = shape[-1] if len(shape) and shape[-1] else 1
    return n // period, period


def write(w: BitWriter, bits: np.ndarray, shape: tuple, values: ValueCodec, entropy: str) -> dict:
    """Write the codes (bit patterns [n]) as levels (module docstring)."""
    if not values.coded or values.entropy != "ans":
        raise LscError(
            "format 'trellis' codes the integer codes of a trellis-quantized tensor with "
            f"entropy 'ans'; got entropy {values.entropy!r}"
            + ("" if values.coded else " or a tensor that is not integer codes of <= 16 bits")
        )
    rows, period = _rows(shape, bits.size)
    m = bits.astype(np.int64).reshape(rows, period) - trellis.center(values.width)
    levels, quantizers = trellis.chains(m)
    bad = ~trellis.valid(m, quantizers)
    if bad.any():
        at = int(np.flatnonzero(bad.reshape(-1))[0])
        raise LscError(
            f"format 'trellis': code {int(bits[at])} at position {at} is not a point of its "
            "quantizer; the codes are not trellis codes (quantize with "
            "lscjax.quant.rdq(..., grid='trellis'))"
        )
    kmax, alphabet = _alphabet(values.width)
    symbols = (levels + kmax).T  # decoding order: column by column
    order = quantizers.T
    streams = [symbols[order == q] for q in QUANTIZERS]
    coders = [
        SymbolCoder.fit("ans", alphabet, np.bincount(s, minlength=2**alphabet)) for s in streams
    ]
    for coder in coders:
        coder.write_table(w, INDEX)
    for coder, stream in zip(coders, streams, strict=True):
        coder.write(w, stream, VALUE)
    return {}


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (None: all positions, the codes' bit patterns [n], options), validated."""
    if not values.coded or values.entropy != "ans":
        raise FormatError("bad 'trellis' tensor: not integer codes with entropy 'ans'")
    kmax, alphabet = _alphabet(values.width)
    coders = [
        SymbolCoder.read_table(r, "ans", alphabet, INDEX, f"trellis quantizer {q} level")
        for q in QUANTIZERS
    ]
    r.budget.entries(n, "trellis levels")
    decoders = []
    for q, coder in zip(QUANTIZERS, coders, strict=True):
        if coder.symbols.size < 2:
            decoders.append(None)
            continue
        what = f"trellis quantizer {q} levels"
        n_words = r.gamma(f"{what} length", VALUE, limit=r.left // ANS_WORD_BITS)
        words = r.uints(n_words, ANS_WORD_BITS, what, VALUE).astype(np.uint32)
        model = constriction.stream.model.Categorical(
            ans_model.probabilities(coder.weights), perfect=False
        )
        decoders.append((constriction.stream.stack.AnsCoder(words), model))
    rows, period = _rows(shape, n)
    levels = np.zeros((rows, period), np.int64)
    quantizers = np.zeros((rows, period), np.int64)
    state = np.zeros(rows, np.int64)
    for j in range(period if rows else 0):
        quantizers[:, j] = state >> 1
        for q, coder, decoder in zip(QUANTIZERS, coders, decoders, strict=True):
            at = np.flatnonzero(quantizers[:, j] == q)
            if not at.size:
                continue
            if coder.symbols.size == 0:
                raise FormatError(f"bad trellis levels: quantizer {q} has an empty table")
            if decoder is None:
                levels[at, j] = coder.symbols[0] - kmax
                continue
            try:
                index = decoder[0].decode(decoder[1], int(at.size))
            except ValueError as err:
                raise FormatError(f"bad trellis levels: {err}") from None
            levels[at, j] = coder.symbols[index] - kmax
        state = trellis.NEXT_STATE[state, levels[:, j] & 1]
    codes = trellis.values_of(levels, quantizers).reshape(-1) + trellis.center(values.width)
    if codes.size and (codes.min() < 0 or codes.max() >= 2**values.width):
        raise FormatError(f"bad trellis levels: a code outside [0, 2**{values.width})")
    return None, codes.astype(f"u{np.dtype(dtype).itemsize}"), {}
