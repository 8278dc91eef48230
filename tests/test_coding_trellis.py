"""Format "trellis" and lattice codebooks: bit-exact round trips of any trellis codes (hypothesis),
the levels' rate against the conditional entropy given the quantizer, refused non-trellis codes,
and crafted malformed headers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax import FormatError, LscError, coding
from lscjax._src.coding.encoded import HEADER_BYTES, LATTICE_FLAG, QARRAY_FLAG
from lscjax._src.quant import trellis
from lscjax.quant import QArray


def trellis_codes(rng, shape, bits, spread):
    """Codes int64 [shape] of a random walk through the state machine: every level k drawn
    around 0 with scale `spread`, the chains along the last axis (NumPy, independent of the
    coder's own `chains`)."""
    period = shape[-1] if shape and shape[-1] else 1
    rows = int(np.prod(shape)) // period if np.prod(shape) else 0
    top = trellis.center(bits)
    m = np.zeros((rows, period), np.int64)
    state = np.zeros(rows, np.int64)
    for j in range(period):
        q = state >> 1
        k = np.rint(rng.laplace(scale=spread, size=rows)).astype(np.int64)
        k = np.clip(k, -((top + 1) // 2) + (q == 0), (top + 1) // 2 - (q == 0))
        m[:, j] = 2 * k - q * np.sign(k)
        state = trellis.NEXT_STATE[state, k & 1]
    return (m + top).reshape(shape)


def qarray(codes, bits, step=0.25):
    book = (np.arange(2**bits - 1) - trellis.center(bits)).astype(np.float32) * np.float32(step)
    dtype = np.uint8 if bits <= 8 else np.uint16
    return QArray(codes.astype(dtype), book, "kmeans", bits, codes.shape)


def round_trip(q):
    enc = coding.encode(q, "trellis", entropy="ans")
    data = enc.to_bytes()
    back = coding.Encoded.from_bytes(data)
    got = coding.decode_qarray(back)
    np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(q.codes))
    np.testing.assert_array_equal(
        np.asarray(got.codebook).view(np.uint32), np.asarray(q.codebook).view(np.uint32)
    )
    assert 8 * len(data) == enc.total_bits + 8 * HEADER_BYTES
    return enc


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 30), min_size=1, max_size=3).map(tuple),
    bits=st.integers(2, 12),
    spread=st.sampled_from([0.0, 0.5, 3.0, 40.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_is_bit_exact(shape, bits, spread, seed):
    codes = trellis_codes(np.random.default_rng(seed), shape, bits, spread)
    enc = round_trip(qarray(codes, bits))
    assert enc.format == "trellis"


def test_levels_cost_their_conditional_entropy_and_the_codebook_its_step():
    rng = np.random.default_rng(0)
    codes = trellis_codes(rng, (64, 512), 10, 3.0)
    enc = round_trip(qarray(codes, 10))
    k, q = trellis.chains(codes - trellis.center(10))
    entropy = 0.0
    for quantizer in (0, 1):
        counts = np.unique(k[q == quantizer], return_counts=True)[1]
        entropy -= float((counts * np.log2(counts / counts.sum())).sum())
    assert entropy <= enc.value_bits <= 1.01 * entropy
    assert enc.index_bits < 40 * 64  # shape, step and two tables; the 1023 entries are not stored
    flags = enc.to_bytes()[HEADER_BYTES - 1]
    assert flags & LATTICE_FLAG and flags & QARRAY_FLAG


def test_codes_off_the_trellis_and_other_entropies_are_refused():
    codes = trellis_codes(np.random.default_rng(1), (4, 16), 6, 3.0)
    bad = codes.copy()
    bad[2, 0] = trellis.center(6) + 1  # m = 1: odd, not a point of quantizer 0 (state 0)
    with pytest.raises(LscError, match="position 32 is not a point of its quantizer"):
        coding.encode(qarray(bad, 6), "trellis", entropy="ans")
    for entropy in ("none", "huffman", "context"):
        with pytest.raises(LscError, match="entropy 'ans'"):
            coding.encode(qarray(codes, 6), "trellis", entropy=entropy)
    with pytest.raises(LscError, match="integer codes"):
        coding.encode(np.zeros((4, 4), np.float32), "trellis", entropy="ans")


def test_rdq_trellis_output_through_the_container():
    w = np.random.default_rng(2).normal(size=(24, 40)).astype(np.float32)
    q = lscjax.quant.rdq({"kernel": w}, 0.01, grid="trellis")["kernel"]
    round_trip(q)
    assert "trellis" not in coding.FORMATS and coding.TRELLIS_FORMAT == "trellis"


def test_malformed_lattice_headers_are_refused():
    codes = trellis_codes(np.random.default_rng(3), (4, 8), 4, 2.0)
    data = bytearray(coding.encode(qarray(codes, 4), "trellis", entropy="ans").to_bytes())
    plain = bytes(data[: HEADER_BYTES - 1]) + bytes([data[HEADER_BYTES - 1] & ~QARRAY_FLAG])
    with pytest.raises(FormatError, match="flags"):  # a lattice bit without a QArray
        coding.Encoded.from_bytes(plain + bytes(data[HEADER_BYTES:]))
    floats = coding.encode(qarray(codes, 4), "dense", entropy="ans").to_bytes()
    assert floats[HEADER_BYTES - 1] & LATTICE_FLAG  # every format stores a lattice compactly
    not_lattice = QArray(
        codes.astype(np.uint8), np.arange(15, dtype=np.float32) ** 2, "kmeans", 4, codes.shape
    )
    data = coding.encode(not_lattice, "dense", entropy="ans").to_bytes()
    assert not data[HEADER_BYTES - 1] & LATTICE_FLAG
    forged = data[: HEADER_BYTES - 1] + bytes([data[HEADER_BYTES - 1] | LATTICE_FLAG])
    with pytest.raises(FormatError):  # its 15 float entries read as a step and an offset
        coding.decode(coding.Encoded.from_bytes(forged + data[HEADER_BYTES:]))
