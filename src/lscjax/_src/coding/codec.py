"""`encode` / `decode`: any array (or a QArray's codes) to an `Encoded` and back, bit-exact."""

import math

import jax.numpy as jnp
import numpy as np

from lscjax._src.coding.bitstream import BitWriter
from lscjax._src.coding.encoded import Encoded, Quantized, write_prefix
from lscjax._src.coding.entropy import check_entropy, index_entropy
from lscjax._src.coding.formats import FORMATS
from lscjax._src.coding.validate import check_shape
from lscjax._src.coding.values import ValueCodec, bit_view, dtype_id, natural_width
from lscjax._src.errors import LscError
from lscjax._src.parallel import count_nonzero, row_spans, shared_map
from lscjax._src.quant.qarray import QArray, check_codes, check_qarray


def _codes_of(qarray: QArray) -> tuple[np.ndarray, Quantized]:
    check_qarray("array", qarray)
    codes = np.asarray(qarray.codes)
    check_codes("array", codes, qarray.method, tuple(qarray.codebook.shape))
    codebook = np.asarray(qarray.codebook, np.float32)
    return codes, Quantized(qarray.method, qarray.bits, tuple(qarray.shape), codebook)


def encode(array, format: str, *, entropy: str = "none", **options) -> Encoded:
    """Encode one tensor in a storage format.

    Args:
      array: any-rank array (NumPy or JAX) of float32, bfloat16, float16, float64 or an integer /
        bool dtype (codes), or a `QArray`: its codes are encoded with `bits`-bit values and its
        codebook, method and dense shape are stored as metadata.
      format: "dense" | "bitmask" | "coo" | "csr" | "csc" | "ri" | "sri" | "lsc", or "trellis"
        for the QArray of `lscjax.quant.rdq(..., grid="trellis")` with entropy "ans" (its
        levels coded with one rANS model per quantizer; `coding.trellis`).
      entropy: "none" | "huffman" | "ans" | "context": the entropy stage for index symbols
        ("ri", "sri", "lsc") and for integer codes (all formats). "context" codes the integer
        codes with one rANS model per context (row and column classes of the stream read as
        rows of the last dimension; `coding.context`) and index symbols as "ans". Float values
        are always stored raw.
      **options: "csr"/"csc": index_width (bits per column index); "ri": k (default 5, 8 for
        rank >= 3); "sri": k (default: the k in 1..16 giving the fewest bits); "lsc": block
        (b, default: the candidate giving the fewest bits) and k.

    Returns:
      The `Encoded` tensor; `decode` gives the array back bit for bit.

    Raises:
      LscError: unknown format, entropy or option, bad option value, unsupported dtype.
    """
    if format not in FORMATS:
        raise LscError(f"unknown format {format!r}; known: {tuple(FORMATS)}")
    check_entropy(entropy)
    unknown = set(options) - FORMATS[format].options
    if unknown:
        raise LscError(f"format {format!r} takes no option(s) {sorted(unknown)}")
    quantized = kept = None
    if isinstance(array, QArray):
        array, quantized, kept = *_codes_of(array), _nonzero_weights(array)
    array = np.asarray(array)
    dtype_id(array.dtype)
    check_shape(array.shape, "array shape", LscError)
    bits = bit_view(array)
    width = quantized.bits if quantized else natural_width(bits, array.dtype)
    w = BitWriter()
    write_prefix(w, array.shape, array.dtype, width, quantized)
    period = array.shape[-1] if array.ndim else 1
    values = ValueCodec(width, array.dtype, entropy, period)
    resolved = FORMATS[format].write(
        w, bits, array.shape, values, index_entropy(entropy), **options
    )
    payload = w.getvalue()
    kept = count_nonzero(array) if kept is None else kept
    return Encoded(
        format,
        array.shape,
        array.dtype,
        {"entropy": entropy, **resolved},
        payload,
        w.counts["value"],
        w.counts["index"],
        quantized,
        kept=kept,
    )


def _nonzero_weights(qarray: QArray) -> int:
    """The non-zero weights of a checked QArray's dense form (`kept_count`'s count)."""
    codebook = np.asarray(qarray.codebook, np.float32)
    if _vector_codebook(qarray.method, codebook):
        return int(np.count_nonzero(np.asarray(qarray.dequantize())))
    return _nonzero_codes(np.asarray(qarray.codes), codebook)


def _vector_codebook(method: str, codebook: np.ndarray) -> bool:
    """Whether a code's weight is not one codebook entry (counted on the dequantized form)."""
    return method in ("product", "residual") or codebook.ndim != 1


def _nonzero_codes(codes: np.ndarray, codebook: np.ndarray) -> int:
    """How many of the codes int [...] map to a non-zero entry of the codebook float32 [K],
    counted over slices (`parallel.shared_map`)."""
    codes = codes.reshape(-1)
    zeros = np.flatnonzero(codebook == 0)  # usually just code 0, the pruned weights

    def kept(span: slice) -> int:
        part = codes[span]
        return part.size - sum(int(np.count_nonzero(part == z)) for z in zeros)

    return sum(shared_map(kept, row_spans(codes.size, 1)))


def _parsed(encoded: Encoded, max_bytes: int | None = None) -> Encoded:
    """`encoded` with its stored positions and values parsed (a fresh `encode` has none)."""
    if not isinstance(encoded, Encoded):
        raise TypeError(
            f"encoded must be an Encoded, got {type(encoded).__name__} "
            "(parse bytes with Encoded.from_bytes)"
        )
    if encoded.decoded is not None:
        return encoded
    return Encoded.from_bytes(encoded.to_bytes(), max_bytes=max_bytes)


def decode(encoded: Encoded, *, max_bytes: int | None = None) -> np.ndarray:
    """The encoded array, bit-exact: `encoded.dtype`, `encoded.shape` (a QArray's codes).

    Args:
      encoded: an `Encoded` (from `encode` or `Encoded.from_bytes`).
      max_bytes: the reading budget when `encoded` still has to be parsed (a fresh `encode`):
        see `Encoded.from_bytes`. An Encoded from `from_bytes` was checked there.

    Raises:
      TypeError: `encoded` is not an Encoded (bytes: use `Encoded.from_bytes`).
      FormatError: malformed bytes, or declared sizes past `max_bytes`.
    """
    positions, values = _parsed(encoded, max_bytes).decoded
    n = math.prod(encoded.shape)
    if positions is None:
        flat = values
    else:
        flat = np.zeros(n, values.dtype)
        flat[positions] = values
    return flat.view(encoded.dtype).reshape(encoded.shape)


def kept_count(encoded: Encoded) -> int:
    """Non-zero weights of the encoded tensor, counted on its stored values (no dense array).

    Float values count when non-zero (-0.0 does not); a QArray's codes count when their
    codebook value is non-zero (vector codebooks, "product" / "residual", are dequantized).

    A fresh `encode` knows the count (`Encoded.kept`); parsed bytes are counted on their values.

    Raises:
      FormatError: malformed bytes.
    """
    if isinstance(encoded, Encoded) and encoded.kept is not None:
        return encoded.kept
    encoded = _parsed(encoded)
    q = encoded.quantized
    if q is not None and _vector_codebook(q.method, q.codebook):
        return int(np.count_nonzero(decode_qarray(encoded).dequantize()))
    values = encoded.decoded[1].view(encoded.dtype)
    if q is None:
        return int(np.count_nonzero(values))
    kept = _nonzero_codes(values, q.codebook)
    if q.codebook.size and q.codebook[0] != 0:  # the unstored positions hold code 0
        kept += int(np.prod(encoded.shape)) - values.size
    return kept


def decode_qarray(encoded: Encoded) -> QArray:
    """The QArray whose codes were encoded, bit-exact (codes and codebook as JAX arrays).

    Raises:
      LscError: `encoded` holds a plain array, not a QArray's codes.
    """
    if encoded.quantized is None:
        raise LscError("this Encoded holds a plain array, not a QArray; use decode()")
    q = encoded.quantized
    return QArray(jnp.asarray(decode(encoded)), jnp.asarray(q.codebook), q.method, q.bits, q.shape)
