"""Bit-exact round trips of every storage format and entropy stage through to_bytes/from_bytes."""

import itertools

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lscjax import coding
from lscjax._src import parallel
from lscjax._src.coding.codec import decode_qarray, kept_count
from lscjax._src.coding.encoded import HEADER_BYTES
from lscjax._src.quant.qarray import QArray
from lscjax.quant import product

FORMATS = coding.FORMATS
ENTROPIES = coding.ENTROPIES
CASES = list(itertools.product(FORMATS, ENTROPIES))
FLOAT_DTYPES = [np.float32, ml_dtypes.bfloat16, np.float16]
CODE_DTYPES = [np.uint8, np.uint16, np.int32]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two arrays of the same dtype and shape."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    unsigned = f"u{a.dtype.itemsize}"
    return bool(np.array_equal(a.reshape(-1).view(unsigned), b.reshape(-1).view(unsigned)))


def round_trip(array, fmt: str, entropy: str, **options) -> coding.Encoded:
    """Encode, serialize, parse, decode; assert bit-exactness and the byte accounting."""
    enc = coding.encode(array, fmt, entropy=entropy, **options)
    data = enc.to_bytes()
    assert 8 * len(data) == enc.total_bits + 8 * HEADER_BYTES
    parsed = coding.Encoded.from_bytes(data)
    assert (parsed.value_bits, parsed.index_bits) == (enc.value_bits, enc.index_bits)
    assert parsed.options == enc.options and parsed.shape == enc.shape
    expected = np.asarray(array.codes if isinstance(array, QArray) else array)
    assert same_bits(coding.decode(parsed), expected), (fmt, entropy)
    assert same_bits(coding.decode(enc), expected)
    return enc


def random_bits(rng, shape, dtype, density):
    """Arbitrary bit patterns (NaN payloads, infinities, denormals, -0.0 included), zeroed at
    1 - density of the positions."""
    itemsize = np.dtype(dtype).itemsize
    raw = rng.integers(0, 2 ** (8 * itemsize), size=shape, dtype=np.uint64)
    raw = np.where(rng.random(shape) < density, raw, 0).astype(f"u{itemsize}")
    return raw.view(dtype)


@st.composite
def tensors(draw):
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES + CODE_DTYPES))
    density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.issubdtype(np.dtype(dtype), np.integer):
        codes = rng.integers(0, draw(st.sampled_from([2, 16, 256])), size=shape)
        return np.where(rng.random(shape) < density, codes, 0).astype(dtype)
    return random_bits(rng, shape, dtype, density)


@pytest.mark.parametrize("fmt,entropy", CASES)
@settings(max_examples=25)
@given(array=tensors())
def test_round_trip_any_shape_and_dtype(fmt, entropy, array):
    round_trip(array, fmt, entropy)


SPECIAL_F32 = np.array(
    [
        0x7FC00001,
        0xFFC12345,
        0x7F800001,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x00000001,
        0x807FFFFF,
    ],
    np.uint32,
).view(np.float32)


@pytest.mark.parametrize("fmt,entropy", CASES)
def test_special_values_kept_bit_for_bit(fmt, entropy):
    """NaN payloads, -NaN, signalling NaN, -0.0, +-Inf and denormals between zeros."""
    array = np.zeros(64, np.float32)
    array[::8] = SPECIAL_F32
    enc = round_trip(array, fmt, entropy)
    if fmt not in ("dense", "ri"):  # -0.0 is a stored value: 8 values, no more
        assert enc.value_bits == 8 * 32


def edge_arrays():
    """All-zero, all-non-zero, single non-zero first / last, empty, 0-d."""
    yield "all_zero", np.zeros((12, 10), np.float32)
    yield "all_nonzero", np.arange(1, 121, dtype=np.float32).reshape(12, 10)
    first = np.zeros(300, np.float32)
    first[0] = 1.5
    yield "single_first", first
    last = np.zeros(300, np.float32)
    last[-1] = -2.5
    yield "single_last", last
    yield "empty", np.zeros((0, 7), np.float32)
    yield "empty_4d", np.zeros((3, 0, 2, 5), np.uint8)
    yield "scalar", np.array(3.0, np.float32)
    yield "scalar_zero", np.array(0.0, np.float32)


@pytest.mark.parametrize("fmt,entropy", CASES)
@pytest.mark.parametrize("name,array", list(edge_arrays()), ids=[n for n, _ in edge_arrays()])
def test_edge_cases(fmt, entropy, name, array):
    round_trip(array, fmt, entropy)


def gap_vector(gap: int, repeats: int = 3) -> np.ndarray:
    """Non-zeros separated by exactly `gap` zeros (the first after `gap` zeros too)."""
    array = np.zeros(repeats * (gap + 1) + 2, np.float32)
    array[gap :: gap + 1][:repeats] = np.arange(1, repeats + 1)
    return array


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("fmt", ["ri", "sri", "lsc"])
@pytest.mark.parametrize("entropy", ENTROPIES)
def test_gaps_around_powers_of_two(k, fmt, entropy):
    """Gaps of 2^k - 1 (a non-zero where RI puts its filler), 2^k, 2^k + 1 and multiples, and the
    SRI run lengths M and M^2 (M = 2^(k-1))."""
    half = 2 ** (k - 1)
    gaps = {
        2**k - 1,
        2**k,
        2**k + 1,
        2 * 2**k - 1,
        2 * 2**k,
        3 * 2**k,
        half,
        half * half,
        half**2 + 1,
    }
    for gap in sorted(gaps):
        array = gap_vector(gap)
        round_trip(array, fmt, entropy, k=k)
        round_trip(array.reshape(1, -1), fmt, entropy, k=k)


@pytest.mark.parametrize("fmt,entropy", [(f, e) for f in ("ri", "sri", "lsc") for e in ENTROPIES])
@settings(max_examples=20)
@given(
    k=st.integers(1, 6),
    gaps=st.lists(st.tuples(st.integers(0, 4), st.integers(-1, 1)), min_size=1, max_size=6),
)
def test_round_trip_gaps_at_multiples_of_two_to_the_k(fmt, entropy, k, gaps):
    """Runs of m * 2^k + d zeros, d in {-1, 0, 1}, between non-zeros (and a trailing run)."""
    runs = [max(0, m * 2**k + d) for m, d in gaps]
    array = np.zeros(sum(runs) + len(runs), np.float32)
    array[np.cumsum(np.array(runs) + 1)[:-1] - 1] = np.arange(1, len(runs))
    round_trip(array, fmt, entropy, k=k)


@pytest.mark.parametrize("entropy", ENTROPIES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_qarray_codes_round_trip(fmt, entropy):
    rng = np.random.default_rng(3)
    codes = np.where(rng.random((6, 5, 4, 8)) < 0.2, rng.integers(1, 16, (6, 5, 4, 8)), 0)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    q = QArray(jnp.asarray(codes, jnp.uint8), jnp.asarray(codebook), "kmeans", 4, (6, 5, 4, 8))
    enc = round_trip(q, fmt, entropy)
    back = coding.decode_qarray(coding.Encoded.from_bytes(enc.to_bytes()))
    assert (back.method, back.bits, back.shape) == ("kmeans", 4, (6, 5, 4, 8))
    assert same_bits(np.asarray(back.codes), codes.astype(np.uint8))
    assert same_bits(np.asarray(back.codebook), codebook)
    np.testing.assert_array_equal(np.asarray(back.dequantize()), codebook[codes])
    if entropy == "none" and fmt != "ri":  # RI also stores filler codes
        stored = codes.size if fmt == "dense" else np.count_nonzero(codes)
        assert enc.value_bits == 4 * stored


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.uint8])
def test_jax_arrays_encode_like_numpy(dtype):
    rng = np.random.default_rng(9)
    array = jnp.asarray(
        np.where(rng.random((5, 5, 2, 3)) < 0.3, rng.integers(1, 9, (5, 5, 2, 3)), 0), dtype
    )
    enc = round_trip(array, "lsc", "huffman")
    assert enc.dtype == np.dtype(dtype) and enc.shape == (5, 5, 2, 3)
    assert enc.to_bytes() == coding.encode(np.asarray(array), "lsc", entropy="huffman").to_bytes()


@pytest.mark.parametrize("fmt", FORMATS)
def test_kept_count_matches_the_decoded_array(fmt):
    """`kept_count` equals the non-zeros of the decoded weights, both as `encode` counted them
    on its input (`Encoded.kept`) and on the stored values of parsed bytes: floats with -0.0 and bf16, k-means codes whose zero code is 0.0 and a code that
    maps to 0.0 inside the codebook, and vector (product) codes."""
    rng = np.random.default_rng(11)
    floats = np.where(rng.random((24, 20)) < 0.3, rng.standard_normal((24, 20)), 0.0)
    floats[0, :3] = -0.0
    codebook = np.array([0.0, 0.5, 0.0, -1.0], np.float32)  # codes 0 and 2 both mean zero
    codes = (rng.integers(1, 4, (24, 20)) * (rng.random((24, 20)) < 0.4)).astype(np.uint8)
    qarrays = [
        QArray(jnp.asarray(codes), jnp.asarray(codebook), "kmeans", 2, (24, 20)),
        product({"kernel": floats.astype(np.float32)}, 4, 5)["kernel"],
    ]
    for array in [floats.astype(np.float32), floats.astype(ml_dtypes.bfloat16), *qarrays]:
        enc = coding.encode(array, fmt)
        if isinstance(array, QArray):
            want = np.count_nonzero(np.asarray(decode_qarray(enc).dequantize()))
        else:
            want = np.count_nonzero(coding.decode(enc).astype(np.float32))
        assert enc.kept == kept_count(enc) == want  # fresh Encoded: counted by encode
        assert kept_count(coding.Encoded.from_bytes(enc.to_bytes())) == want


@pytest.mark.parametrize("fmt", ["sri", "lsc", "ri"])
@pytest.mark.parametrize("entropy", ["none", "huffman", "ans"])
def test_slices_of_a_tensor_encode_and_decode_the_same_bytes(monkeypatch, fmt, entropy):
    """With slices of 7 elements, encoding (masks, block bands, SRI entries, rANS ranks) and
    decoding (rANS symbols decoded 7 at a time, walked piece by piece) give the bytes and the
    array of the unsliced path."""
    rng = np.random.default_rng(12)
    codes = (rng.integers(1, 16, (45, 38)) * (rng.random((45, 38)) < 0.2)).astype(np.uint8)
    floats = np.where(rng.random((45, 38)) < 0.1, rng.standard_normal((45, 38)), 0.0)
    options = {"block": 4} if fmt == "lsc" else {}
    arrays = [codes, floats.astype(np.float32)]
    whole = [coding.encode(a, fmt, entropy=entropy, **options).to_bytes() for a in arrays]
    monkeypatch.setattr(parallel, "SLICE_ELEMENTS", 7)
    for array, data in zip(arrays, whole, strict=True):
        assert round_trip(array, fmt, entropy, **options).to_bytes() == data
