"""Layouts and accounting of the storage formats against hand computations and published numbers."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from bitarray import bitarray

from lscjax import LscError, coding
from lscjax._src.coding import lsc, ri, sri
from lscjax._src.coding.bitstream import gamma_bits
from lscjax._src.coding.layout import gaps
from lscjax._src.quant.qarray import QArray


def sri_example() -> np.ndarray:
    """docs/format.md's SRI example: 40 elements, non-zeros at 1, 2, 9, 30."""
    array = np.zeros(40, np.float32)
    array[[1, 2, 9, 30]] = [0.5, -1.0, 2.0, 0.25]
    return array


def test_sri_entries_worked_example():
    """Gaps 1, 0, 6, 20 with k = 3 (M = 4): [1], [0], [-1, 2], [-4, -1, 0]."""
    z = gaps(np.array([1, 2, 9, 30]))
    np.testing.assert_array_equal(z, [1, 0, 6, 20])
    entries = [1, 0, -1, 2, -4, -1, 0]
    np.testing.assert_array_equal(sri.entries(z, 3), np.array(entries) % 8)


def test_sri_bytes_worked_example():
    """The exact bit string of docs/format.md's example (entropy "none", k = 3)."""
    enc = coding.encode(sri_example(), "sri", k=3)
    bits = bitarray(endian="big")
    bits.frombytes(enc.payload)
    values = "".join(format(int(v), "032b") for v in sri_example().view(np.uint32)[[1, 2, 9, 30]])
    expected = (
        "010"  # gamma(ndim = 1)
        "00000101001"  # gamma(dim = 40)
        "00100"  # gamma(k = 3)
        "0001000"  # gamma(entries = 7)
        "001"
        "000"
        "111"
        "010"
        "100"
        "111"
        "000" + values  # entries 1 0 -1 2 -4 -1 0
    )
    assert bits.to01() == expected + "0" * (-len(expected) % 8)
    assert enc.value_bits == 4 * 32
    assert enc.index_bits == len(expected) - 4 * 32 + (-len(expected) % 8)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_ri_fillers_by_hand(k):
    """Deep Compression's RI: a run of z zeros takes z // 2^k fillers, then the gap z mod 2^k."""
    z = np.array([2**k - 1, 2**k, 2**k + 1, 3 * 2**k])
    symbols, stored = ri.entries(z, np.array([1, 2, 3, 4], np.uint32), k)
    top = 2**k - 1
    np.testing.assert_array_equal(symbols, [top, top, 0, top, 1, top, top, top, 0])
    np.testing.assert_array_equal(stored, [1, 0, 2, 0, 3, 0, 0, 0, 4])


@pytest.mark.parametrize("density", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("entropy", ["none", "huffman"])
def test_sri_k_minimizes_total_bits(density, entropy):
    rng = np.random.default_rng(0)
    array = (rng.random(3000) < density) * rng.standard_normal(3000).astype(np.float32)
    array = np.abs(array)  # no -0.0: every zero is a zero
    chosen = coding.encode(array, "sri", entropy=entropy)
    totals = [coding.encode(array, "sri", entropy=entropy, k=k).total_bits for k in range(1, 17)]
    assert chosen.total_bits == min(totals)


@pytest.mark.parametrize("shape", [(40, 52), (5, 5, 6, 16)])
@pytest.mark.parametrize("entropy", ["none", "huffman"])
def test_lsc_block_minimizes_total_bits(shape, entropy):
    rng = np.random.default_rng(1)
    array = np.abs((rng.random(shape) < 0.05) * rng.standard_normal(shape)).astype(np.float32)
    chosen = coding.encode(array, "lsc", entropy=entropy)
    totals = [
        coding.encode(array, "lsc", entropy=entropy, block=b).total_bits
        for b in lsc.BLOCK_CANDIDATES
    ]
    assert chosen.total_bits == min(totals)
    assert chosen.options["block"] in lsc.BLOCK_CANDIDATES


def test_bitmask_and_csr_accounting_by_hand():
    """bitmask: n bits; CSR: n + 1 row pointers of ceil(log2(a + 1)) bits, a column indices."""
    rng = np.random.default_rng(2)
    array = np.abs((rng.random((12, 10)) < 0.3) * rng.standard_normal((12, 10))).astype(np.float32)
    a = int(np.count_nonzero(array))
    prefix = gamma_bits(2) + gamma_bits(12) + gamma_bits(10)
    enc = coding.encode(array, "bitmask")
    assert enc.value_bits == 32 * a
    assert enc.index_bits == prefix + 120 + (-(prefix + 120 + 32 * a) % 8)
    csr = coding.encode(array, "csr", index_width=6)
    fields = gamma_bits(6) + gamma_bits(a) + 13 * a.bit_length() + 6 * a
    assert csr.index_bits == prefix + fields + (-(prefix + fields + 32 * a) % 8)
    with pytest.raises(LscError, match="index_width"):
        coding.encode(array, "csr", index_width=3)


def test_golden_deep_compression_conv2_storage_rate():
    """Han et al.: P+Q rate [k (b_w + b_i) + 2^b_w * 32] / (32 n) = 6.0% for LeNet-5 conv2
    (12% kept, 8-bit weights, 5-bit index); the "ri" accounting reproduces it within 0.5 points."""
    shape = (5, 5, 20, 50)
    n = math.prod(shape)
    rng = np.random.default_rng(0)
    keep = np.zeros(n, bool)
    keep[rng.choice(n, round(0.12 * n), replace=False)] = True
    codes = np.where(keep, rng.integers(1, 256, n), 0).astype(np.uint8).reshape(shape)
    codebook = np.concatenate([[0.0], rng.standard_normal(255)]).astype(np.float32)
    q = QArray(jnp.asarray(codes), jnp.asarray(codebook), "kmeans", 8, shape)
    enc = coding.encode(q, "ri", k=5)
    k = int(keep.sum())
    formula = (k * (8 + 5) + 2**8 * 32) / (32 * n)
    rate = 8 * len(enc.to_bytes()) / (32 * n)
    assert abs(rate - formula) * 100 <= 0.5
    assert abs(rate - 0.060) * 100 <= 0.5


@pytest.mark.parametrize("shape,block", [((40, 52), 8), ((33, 17), 4), ((5, 5, 6, 16), 16)])
@pytest.mark.parametrize("entropy", coding.ENTROPIES)
def test_decode_blocks_against_dense_blocking(shape, block, entropy):
    rng = np.random.default_rng(4)
    array = (rng.random(shape) < 0.04) * rng.standard_normal(shape).astype(np.float32)
    array = array.astype(np.float32)
    enc = coding.Encoded.from_bytes(
        coding.encode(array, "lsc", entropy=entropy, block=block).to_bytes()
    )
    rows, cols, tiles = coding.decode_blocks(enc)
    assert rows.dtype == cols.dtype == np.int32 and tiles.shape == (rows.size, block, block)
    matrix = array.reshape(-1, shape[-1])  # HWIO -> [H * W * I, O]
    grid = (-(-matrix.shape[0] // block), -(-matrix.shape[1] // block))
    padded = np.zeros((grid[0] * block, grid[1] * block), np.float32)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    reference = padded.reshape(grid[0], block, grid[1], block).transpose(0, 2, 1, 3)
    nonzero = np.argwhere(np.any(reference.view(np.uint32) != 0, axis=(2, 3)))
    np.testing.assert_array_equal(np.stack([rows, cols], 1), nonzero)  # row-major order
    np.testing.assert_array_equal(tiles.view(np.uint32), reference[rows, cols].view(np.uint32))


def test_compare_table_against_oracles():
    rng = np.random.default_rng(5)
    array = np.abs((rng.random((30, 20)) < 0.1) * rng.standard_normal((30, 20))).astype(np.float32)
    table = coding.compare(array)
    k = np.count_nonzero(array)
    assert table.nonzeros == k and table.size == 600
    assert table.floor == pytest.approx(math.log2(math.comb(600, k)) / k)
    assert {(r.format, r.entropy) for r in table.rows} == {
        (f, e) for f in coding.FORMATS for e in coding.ENTROPIES
    }
    for row in table.rows:
        enc = coding.encode(array, row.format, entropy=row.entropy)
        assert row.total_bits == 8 * len(enc.to_bytes())
        assert row.ratio == pytest.approx(600 * 32 / row.total_bits)
        assert row.index_per_nonzero == pytest.approx(enc.index_bits / k)
    text = str(table)
    assert text.count("\n") == len(table.rows) + 2 and "floor" in text


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda a: coding.encode(a, "zip"), "unknown format"),
        (lambda a: coding.encode(a, "lsc", entropy="lzma"), "entropy"),
        (lambda a: coding.encode(a, "coo", k=3), "no option"),
        (lambda a: coding.encode(a, "sri", k=0), "k must be"),
        (lambda a: coding.encode(a, "lsc", block=0), "block must be"),
        (lambda a: coding.encode(a.astype(np.complex64), "dense"), "unsupported dtype"),
        (lambda a: coding.decode_blocks(coding.encode(a, "sri")), "lsc"),
        (lambda a: coding.decode_qarray(coding.encode(a, "sri")), "plain array"),
    ],
)
def test_bad_arguments_raise_lsc_error(call, match):
    with pytest.raises(LscError, match=match):
        call(np.ones((4, 4), np.float32))


@pytest.mark.parametrize("entropy", ["none", "huffman"])
def test_lsc_estimated_block_choice_for_large_tensors(monkeypatch, entropy):
    """Above EXACT_SEARCH_ELEMENTS b minimizes the estimate; on a matrix whose non-zeros cluster
    in 16 x 16 tiles its total is within 2% of the exact best, and it round-trips."""
    rng = np.random.default_rng(6)
    dense_tiles = np.kron(rng.random((12, 10)) < 0.2, np.ones((16, 16))) > 0
    array = np.where(dense_tiles & (rng.random(dense_tiles.shape) < 0.5), 1.0, 0.0)
    array = array.astype(np.float32)
    counts = lsc.candidate_counts(array != 0)
    for block, grid in counts.items():
        reference = coding.decode_blocks(coding.encode(array, "lsc", block=block))
        assert np.count_nonzero(grid) == reference[0].size
        assert grid.sum() == np.count_nonzero(array)
    monkeypatch.setattr(lsc, "EXACT_SEARCH_ELEMENTS", 0)
    chosen = coding.encode(array, "lsc", entropy=entropy)
    best = min(
        coding.encode(array, "lsc", entropy=entropy, block=b).total_bits
        for b in lsc.BLOCK_CANDIDATES
    )
    assert chosen.total_bits <= 1.02 * best
    np.testing.assert_array_equal(coding.decode(chosen), array)


def test_lsc_bytes_worked_example():
    """docs/format.md's LSC example: 6 x 6, b = 4, k = 3, clipped edge blocks, entropy "none"."""
    matrix = np.zeros((6, 6), np.float32)
    matrix[[0, 1, 2, 5], [1, 1, 5, 0]] = [1.0, -2.0, 0.5, 4.0]
    enc = coding.encode(matrix, "lsc", block=4, k=3)
    bits = bitarray(endian="big")
    bits.frombytes(enc.payload)
    values = "".join(
        format(int(v), "032b") for v in np.float32([1.0, -2.0, 0.5, 4.0]).view(np.uint32)
    )
    index = (
        "011"
        "00111"
        "00111"  # rank 2, 6, 6
        "00101"
        "00100"  # b = 4, k = 3
        "1110"  # block bitmask
        "010"
        "1"
        "0"  # Wn = 1; n_0 - 1, n_1 - 1
        "011"
        "10"
        "10"
        "10"  # WL = 2; L_j
        "001011"
        "111001"
        "111000"  # entries per block
    )
    assert bits.to01() == index + values + "0" * 5
    assert (enc.index_bits, enc.value_bits) == (len(index) + 5, 128)
    rows, cols, tiles = coding.decode_blocks(enc)
    np.testing.assert_array_equal(rows, [0, 0, 1])
    np.testing.assert_array_equal(cols, [0, 1, 0])
    assert tiles[1][2, 1] == 0.5 and tiles[2][1, 0] == 4.0


@pytest.mark.parametrize("entropy", ["none", "huffman"])
@pytest.mark.parametrize("shape,block", [((40, 52), 8), ((33, 17), 4), ((5, 5, 6, 16), 16)])
def test_decode_block_alone_equals_decode_blocks(shape, block, entropy):
    rng = np.random.default_rng(8)
    array = np.where(rng.random(shape) < 0.05, rng.standard_normal(shape), 0).astype(np.float32)
    enc = coding.encode(array, "lsc", entropy=entropy, block=block)
    _, _, tiles = coding.decode_blocks(enc)
    for index, tile in enumerate(tiles):
        np.testing.assert_array_equal(
            coding.decode_block(enc, index).view(np.uint32), tile.view(np.uint32)
        )
    with pytest.raises(LscError, match="outside"):
        coding.decode_block(enc, len(tiles))


def test_decode_block_refuses_what_cannot_decode_alone():
    codes = np.eye(8, dtype=np.uint8)
    with pytest.raises(LscError, match="together"):
        coding.decode_block(coding.encode(codes, "lsc", entropy="huffman"), 0)
    with pytest.raises(LscError, match="'none' or 'huffman'"):
        coding.decode_block(coding.encode(codes, "lsc", entropy="ans"), 0)
