"""The .lsc container: exact round trip, and every malformation is a FormatError."""

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lscjax import FormatError
from lscjax._src import container

SECTIONS = [
    ({"path": "Dense_0/kernel", "kind": "encoded"}, bytes(range(200)) * 3),
    ({"path": "Dense_0/bias", "kind": "raw", "dtype": "float32", "shape": [4]}, b"\x01" * 16),
    ({"path": "empty", "kind": "raw", "dtype": "float32", "shape": [0]}, b""),
]
DATA = container.pack({"recipe": {"name": "lsc"}}, SECTIONS)


def test_round_trip_exact():
    meta, sections = container.unpack(DATA)
    assert meta == {"recipe": {"name": "lsc"}}
    assert [(e["path"], bytes(p)) for e, p in sections] == [(e["path"], p) for e, p in SECTIONS]
    assert sections[1][0]["shape"] == [4]


def test_size_is_prefix_plus_header_plus_sections():
    header_len = struct.unpack_from("<I", DATA, 12)[0]
    assert len(DATA) == container.PREFIX_BYTES + header_len + sum(len(p) for _, p in SECTIONS)


def test_every_truncation_point_is_a_format_error():
    for cut in range(len(DATA)):
        with pytest.raises(FormatError):
            container.unpack(DATA[:cut])


@settings(max_examples=300)
@given(st.data())
def test_byte_flips_are_format_errors(data):
    pos = data.draw(st.integers(0, len(DATA) - 1))
    flip = data.draw(st.integers(1, 255))
    corrupted = bytearray(DATA)
    corrupted[pos] ^= flip
    with pytest.raises(FormatError):
        container.unpack(bytes(corrupted))


def _with_header(header: bytes, body: bytes = b"", version: int = 1) -> bytes:
    prefix = struct.pack("<8sHHII", container.MAGIC, version, 0, len(header), zlib.crc32(header))
    return prefix + header + body


@pytest.mark.parametrize(
    "data, message",
    [
        (b"PK\x03\x04" + bytes(40), "bad magic"),
        (_with_header(b"{}", version=2), "unknown container version 2"),
        (_with_header(b"not json"), "not valid JSON"),
        (_with_header(b"[]"), "'meta'"),
        (
            _with_header(
                b'{"meta":{},"sections":[{"path":"a","kind":"raw","length":-1,"crc32":0}]}'
            ),
            "length must be >= 0",
        ),
        (
            _with_header(
                b'{"meta":{},"sections":[{"path":"a","kind":"raw","length":"9","crc32":0}]}'
            ),
            "length",
        ),
        (_with_header(b'{"meta":{},"sections":[]}', b"trailing"), "declare 0 bytes"),
        (  # an integer of 5000 digits: Python's int parser refuses it, as a ValueError
            _with_header(b'{"meta":{"x":' + b"9" * 5000 + b'},"sections":[]}'),
            "not valid JSON",
        ),
        (
            _with_header(
                b'{"meta":{},"sections":[{"path":"a","kind":"raw","length":0,"crc32":'
                + b"9" * 400
                + b"}]}"
            ),
            "crc32 must be in",
        ),
    ],
)
def test_malformed_headers(data, message):
    with pytest.raises(FormatError, match=message):
        container.unpack(data)


def test_sizes_beyond_the_file_rejected_before_allocation():
    # A header claiming a 2**40-byte section in a tiny file: rejected by arithmetic, no allocation.
    header = b'{"meta":{},"sections":[{"path":"a","kind":"raw","length":1099511627776,"crc32":0}]}'
    with pytest.raises(FormatError, match="declare 1099511627776 bytes"):
        container.unpack(_with_header(header, b"abc"))
    huge_header_len = struct.pack("<8sHHII", container.MAGIC, 1, 0, 2**32 - 1, 0)
    with pytest.raises(FormatError, match="header declares 4294967295 bytes"):
        container.unpack(huge_header_len + b"{}")
