"""Crafted files and blobs, lengths and CRCs consistent: each is refused with FormatError before
the allocation or the entropy-coder call it declares (the reading budget and the header checks)."""

import itertools
import json
import struct
import zlib

import numpy as np
import pytest

import lscjax
from lscjax import FormatError, LscError, coding
from lscjax._src import container
from lscjax._src.coding.bitstream import BitWriter
from lscjax._src.coding.budget import DEFAULT_FLOOR, ENTRY_BYTES, Budget
from lscjax._src.coding.encoded import MAGIC, QARRAY_FLAG, VERSION, Quantized, write_prefix
from lscjax._src.coding.entropy import ENTROPIES
from lscjax._src.coding.formats import FORMATS, NAMES
from lscjax._src.coding.values import DTYPES, ValueCodec, bit_view
from lscjax._src.compressed import _read, from_bytes, to_bytes
from lscjax.quant import QArray


def header(fmt: str, dtype: str = "float32", entropy: str = "none", qarray: bool = False) -> bytes:
    flags = ENTROPIES.index(entropy) | (QARRAY_FLAG if qarray else 0)
    return MAGIC + bytes([VERSION, NAMES.index(fmt), DTYPES.index(dtype), flags])


def shape_bits(w: BitWriter, shape: tuple) -> None:
    w.gamma(len(shape))
    for d in shape:
        w.gamma(d)


def lsc_file(sections: list[tuple[str, bytes]]) -> bytes:
    return container.pack({}, [({"path": p, "kind": "encoded"}, blob) for p, blob in sections])


def one_symbol_dense_ans(n: int) -> bytes:
    """A dense/ans blob of n uint8 codes, all one symbol: the value table, and no stream."""
    w = BitWriter()
    shape_bits(w, (n,))
    w.gamma(1)  # value width 1
    w.gamma(1)  # one present symbol
    w.uint(0, 1)  # as a list
    w.uint(1, 1)  # symbol 1
    w.gamma(0)  # weight width 0
    return header("dense", "uint8", "ans") + w.getvalue()


def test_rans_entries_past_the_budget_never_reach_the_coder():
    """~4.8 KB of sri/ans declaring 2^31 - 1 entries with a table skewed enough (p_max within
    the model's rounding of 1) that no symbols-per-word bound applies: the entries are charged
    to the budget before constriction would allocate them (it aborts the process otherwise)."""
    n = 2**31 - 1
    w = BitWriter()
    shape_bits(w, (n,))
    w.gamma(4)  # k
    w.gamma(n)  # entries
    w.gamma(2)  # two present symbols
    w.uint(0, 1)
    w.uints(np.array([0, 1]), 4)
    w.gamma(7)  # weight width
    w.uints(np.array([127, 0]), 7)
    w.gamma(1200)  # rANS words
    w.uints(np.full(1200, 0xDEADBEEF), 32)
    blob = header("sri", "float32", "ans") + w.getvalue()
    assert 4700 < len(blob) < 4900
    with pytest.raises(FormatError, match="reading budget"):
        coding.Encoded.from_bytes(blob)  # the decoded array alone is over the default budget
    big = 8 * n + 2**20  # room for the array: the entries are what is refused
    with pytest.raises(FormatError, match="sri entries would take"):
        coding.Encoded.from_bytes(blob, max_bytes=big)


def test_lsc_file_declaring_8_gib_is_refused():
    w = BitWriter()
    shape_bits(w, (2**15, 2**16))  # 2^31 float32: 8 GiB
    w.gamma(4)
    w.gamma(1)
    data = lsc_file([("w", header("lsc") + w.getvalue())])
    assert len(data) < 200
    with pytest.raises(FormatError, match="8589934592 bytes, past the reading budget"):
        from_bytes(data)


def test_sixteen_sections_are_charged_to_one_budget():
    blob = one_symbol_dense_ans(2**20)
    data = lsc_file([(f"s{i}", blob) for i in range(16)])
    assert len(data) < 1500
    per_section = 2**20 + ENTRY_BYTES * 2**20
    assert 16 * per_section > DEFAULT_FLOOR > per_section
    with pytest.raises(FormatError, match=r"section 's5'.*reading budget"):
        from_bytes(data)  # each section fits the budget; five of them use it up
    model = from_bytes(data, max_bytes=17 * per_section)
    np.testing.assert_array_equal(coding.decode(model.encoded["s15"]), np.ones(2**20, np.uint8))


def test_one_symbol_rans_blob_of_2_31_elements():
    blob = one_symbol_dense_ans(2**31)
    assert len(blob) == 16
    with pytest.raises(FormatError, match="reading budget"):
        coding.Encoded.from_bytes(blob)
    with pytest.raises(FormatError, match="values would take"):
        coding.Encoded.from_bytes(blob, max_bytes=2**31 + 1000)


@pytest.mark.parametrize("rows", [2**31, 2**27])
def test_csr_without_non_zeros_declares_zero_width_pointers(rows):
    """No non-zeros: rows + 1 row pointers of width 0, i.e. no bits behind them."""
    w = BitWriter()
    shape_bits(w, (rows, 1))
    w.gamma(1)  # value width
    w.gamma(0)  # index width
    w.gamma(0)  # count
    blob = header("csr", "bool") + w.getvalue()
    assert len(blob) <= 16
    with pytest.raises(FormatError, match="reading budget"):
        coding.Encoded.from_bytes(blob)


def test_default_budget_reads_legal_files_and_max_bytes_is_explicit():
    x = np.zeros((64, 64), np.float32)
    x[3, 5] = 1.5
    blob = coding.encode(x, "lsc").to_bytes()
    np.testing.assert_array_equal(coding.decode(coding.Encoded.from_bytes(blob)), x)
    with pytest.raises(FormatError, match="16384 bytes, past the reading budget of 16000"):
        coding.Encoded.from_bytes(blob, max_bytes=16000)
    assert coding.Encoded.from_bytes(blob, max_bytes=2**14 + 10**4).shape == (64, 64)
    with pytest.raises(FormatError, match="past the reading budget"):
        coding.decode(coding.encode(x, "lsc"), max_bytes=100)
    with pytest.raises(TypeError, match="max_bytes"):
        coding.Encoded.from_bytes(blob, max_bytes=1.5)
    with pytest.raises(LscError, match="max_bytes must be >= 0"):
        Budget.of(10, -1)


def test_load_max_bytes_counts_the_dense_weights(tmp_path):
    params = {"Dense_0": {"kernel": np.ones((64, 32), np.float32), "bias": np.zeros(32)}}
    model = lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.5, bits=4))
    data = to_bytes(model)
    budget = Budget(2**30)
    _read(data, budget)
    used = budget.max_bytes - budget.left  # what the leaves themselves take
    (tmp_path / "m.lsc").write_bytes(data)
    assert lscjax.load(tmp_path / "m.lsc", layout="model", max_bytes=used).encoded
    with pytest.raises(FormatError, match="past the reading budget"):
        lscjax.load(tmp_path / "m.lsc", layout="model", max_bytes=used - 1)
    with pytest.raises(FormatError, match="dense weights of 'Dense_0/kernel'"):
        lscjax.load(tmp_path / "m.lsc", max_bytes=used + 4 * 64 * 32 - 1)
    dense = lscjax.load(tmp_path / "m.lsc", max_bytes=used + 4 * 64 * 32)
    assert dense["Dense_0"]["kernel"].shape == (64, 32)


def raw_file(shape_json: bytes, payload: bytes = b"") -> bytes:
    entry = b'{"path":"a","kind":"raw","dtype":"float32","shape":' + shape_json
    entry += b',"length":%d,"crc32":%d}' % (len(payload), zlib.crc32(payload))
    head = b'{"meta":{},"sections":[' + entry + b"]}"
    prefix = struct.pack("<8sHHII", container.MAGIC, 1, 0, len(head), zlib.crc32(head))
    return prefix + head + payload


@pytest.mark.parametrize(
    "shape_json, match",
    [
        (json.dumps([1] * 65).encode(), "65 axes"),
        (json.dumps([1] * 17).encode(), "17 axes"),
        (b"[1" + b"0" * 400 + b"]", "dimension must be in"),
        (json.dumps([0, 2**62]).encode(), "dimension must be in"),
        (json.dumps([2**20, 2**20]).encode(), "exceeds 2147483648 elements"),
        (b"[" + b"7" * 5000 + b"]", "not valid JSON"),
        (b'"3"', "must be a list"),
        (b"[2.0]", "must be an integer"),
        (b"[true]", "must be an integer"),
    ],
)
def test_raw_shapes_from_json(shape_json, match):
    with pytest.raises(FormatError, match=match):
        from_bytes(raw_file(shape_json))


def test_encoded_rank_past_the_limit():
    w = BitWriter()
    shape_bits(w, (1,) * 65)
    with pytest.raises(FormatError, match="rank"):
        coding.Encoded.from_bytes(header("dense") + w.getvalue())


def forged(codes: np.ndarray, quantized: Quantized, fmt: str = "dense") -> bytes:
    """A QArray blob written without the writer's checks (as a crafted file would be)."""
    w = BitWriter()
    write_prefix(w, codes.shape, codes.dtype, quantized.bits, quantized)
    FORMATS[fmt].write(
        w, bit_view(codes), codes.shape, ValueCodec(quantized.bits, codes.dtype, "none"), "none"
    )
    return header(fmt, codes.dtype.name, qarray=True) + w.getvalue()


BOOK = np.array([0.0, -1.0, 0.5, 2.0], np.float32)
CODES = np.arange(15, dtype=np.uint8).reshape(3, 5) % 4


def test_forged_blob_of_consistent_facts_reads_back():
    """The forging helper writes the real layout: consistent facts parse and dequantize."""
    q = coding.decode_qarray(
        coding.Encoded.from_bytes(forged(CODES, Quantized("kmeans", 2, (3, 5), BOOK)))
    )
    np.testing.assert_array_equal(np.asarray(q.dequantize()), BOOK[CODES])


@pytest.mark.parametrize(
    "codes, quantized, match",
    [
        (CODES, Quantized("kmeans", 2, (5, 3), BOOK), "codes of shape"),  # dense shape differs
        (CODES, Quantized("residual", 2, (3, 5), BOOK), "residual"),  # method flipped
        (CODES.astype(np.int8), Quantized("kmeans", 2, (3, 5), BOOK), "uint8 or uint16"),
        (CODES.astype(np.uint32), Quantized("kmeans", 2, (3, 5), BOOK), "uint8 or uint16"),
        (CODES.astype(bool), Quantized("kmeans", 1, (3, 5), BOOK[:2]), "uint8 or uint16"),
        (CODES, Quantized("kmeans", 2, (3, 5), BOOK[:3]), "code 3 past the 3 codebook"),
        (CODES % 2, Quantized("kmeans", 1, (3, 5), BOOK), "exceed 2\\*\\*bits"),
        (CODES, Quantized("product", 2, (3, 5), BOOK), "product"),
    ],
)
def test_quantized_header_is_checked_on_read(codes, quantized, match):
    with pytest.raises(FormatError, match=match):
        coding.Encoded.from_bytes(forged(codes, quantized))


def test_a_two_bit_flip_of_the_method_is_refused():
    q = QArray(CODES, BOOK, "kmeans", 2, (3, 5))
    blob = bytearray(coding.encode(q, "dense").to_bytes())
    method = 8 * 6 + 3 + 5 + 5 + 3  # after gamma(2), gamma(3), gamma(5): the shape; gamma(2): width
    for bit in (method, method + 1):  # the 2-bit method: kmeans (0) -> residual (3)
        blob[bit // 8] ^= 0x80 >> (bit % 8)
    with pytest.raises(FormatError, match="residual"):
        coding.Encoded.from_bytes(bytes(blob))


def test_from_encoded_refuses_a_bool_array():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    with pytest.raises(LscError, match="must hold floats.*bool"):
        lscjax.sparse.BlockSparse.from_encoded(coding.encode(mask, "lsc", block=4))


@pytest.mark.parametrize("fmt,entropy", list(itertools.product(coding.FORMATS, coding.ENTROPIES)))
def test_writer_refuses_what_the_reader_refuses(fmt, entropy):
    with pytest.raises(LscError, match="17 axes"):
        coding.encode(np.zeros((1,) * 17, np.float32), fmt, entropy=entropy)
    coding.encode(np.zeros((1,) * 16, np.float32), fmt, entropy=entropy)
