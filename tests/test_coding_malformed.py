"""Malformed bytes raise FormatError with a message: never another exception, a hang or a giant
allocation (every length read from the bytes is checked against the buffer first)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lscjax import FormatError, coding
from lscjax._src.coding.bitstream import BitWriter
from lscjax._src.coding.encoded import MAGIC, VERSION
from lscjax._src.coding.formats import NAMES
from lscjax._src.coding.values import DTYPES

CASES = list(itertools.product(coding.FORMATS, coding.ENTROPIES))


def sample(dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    array = np.where(rng.random((9, 11)) < 0.15, rng.integers(1, 60, (9, 11)), 0)
    return array.astype(dtype)


def valid_bytes(fmt: str, entropy: str, dtype=np.float32) -> bytes:
    return coding.encode(sample(dtype), fmt, entropy=entropy).to_bytes()


def parse_or_format_error(data: bytes) -> None:
    """Either the bytes parse and decode to an array of their declared shape, or FormatError."""
    try:
        enc = coding.Encoded.from_bytes(data)
    except FormatError as err:
        assert str(err)
        return
    out = coding.decode(enc)
    assert out.shape == enc.shape and out.dtype == enc.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("fmt,entropy", CASES)
def test_every_truncation_and_extension_raises(fmt, entropy, dtype):
    data = valid_bytes(fmt, entropy, dtype)
    for end in range(len(data)):
        with pytest.raises(FormatError):
            coding.Encoded.from_bytes(data[:end])
    for tail in (b"\x00", b"\x01", b"\xff" * 9):
        with pytest.raises(FormatError, match="trailing"):
            coding.Encoded.from_bytes(data + tail)


@pytest.mark.parametrize("fmt,entropy", CASES)
@settings(max_examples=30)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flips_parse_or_raise_format_error(fmt, entropy, flips):
    data = bytearray(valid_bytes(fmt, entropy, np.uint8 if entropy == "huffman" else np.float32))
    for where, bit in flips:
        data[where % len(data)] ^= 1 << bit
    parse_or_format_error(bytes(data))


@settings(max_examples=200)
@given(data=st.binary(min_size=0, max_size=64))
def test_random_bytes_after_a_valid_header(data):
    for fmt_id, entropy_id in itertools.product(range(len(NAMES)), range(3)):
        header = MAGIC + bytes([VERSION, fmt_id, DTYPES.index("float32"), entropy_id])
        parse_or_format_error(header + data)


def header(fmt: str, dtype: str = "float32", flags: int = 0) -> bytes:
    return MAGIC + bytes([VERSION, NAMES.index(fmt), DTYPES.index(dtype), flags])


def body(*fields) -> bytes:
    """Bytes of gamma-coded integers."""
    w = BitWriter()
    for x in fields:
        w.gamma(x)
    return w.getvalue()


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "header"),
        (b"PK\x03\x04" + b"\x00" * 10, "header"),
        (MAGIC + bytes([99, 0, 0, 0]), "version"),
        (MAGIC + bytes([VERSION, 200, 0, 0]), "format id"),
        (MAGIC + bytes([VERSION, 0, 0, 8]), "flags"),  # bit 3: no such flag
        (MAGIC + bytes([VERSION, 0, 250, 0]), "dtype"),
        (header("dense") + body(1, 2**40), "dimension must be in"),  # a 2^40-element shape
        (header("dense") + body(17), "exceeds"),  # 17 axes
        (header("dense") + body(1, 2**20), "truncated"),  # 2^20 floats claimed, none given
        (header("sri") + body(1, 1000, 3, 10**9), "exceeds"),  # 10^9 entries in 1000 elements
        (header("coo") + body(1, 1000, 5000), "exceeds"),  # more non-zeros than elements
        (header("lsc") + body(2, 2**12, 2**12, 1, 3), "truncated"),  # a 2^24-bit block mask
        (header("lsc", flags=1) + body(1, 2**20, 0, 3), "block 0"),  # b = 0
        (header("ri", "uint8", flags=4) + body(1, 8, 9), "value width"),  # 9-bit uint8 codes
    ],
)
def test_crafted_headers(data, match):
    with pytest.raises(FormatError, match=match):
        coding.Encoded.from_bytes(data)


def test_rans_count_beyond_its_words_is_rejected():
    """A uniform 2-symbol rANS table cannot code 10^6 entries in one 32-bit word."""
    w = BitWriter()
    for x in (1, 10**6, 3, 10**6):  # shape (10^6,), k = 3, 10^6 entries
        w.gamma(x)
    w.gamma(2)  # table: 2 present symbols
    w.uint(0, 1)  # as a list
    w.uints(np.array([0, 1]), 3)
    w.gamma(1)  # weight width 1
    w.uints(np.array([0, 0]), 1)  # equal weights
    w.gamma(1)  # one word
    w.uint(12345, 32)
    with pytest.raises(FormatError, match="cannot fit"):
        coding.Encoded.from_bytes(header("sri", flags=2) + w.getvalue())
