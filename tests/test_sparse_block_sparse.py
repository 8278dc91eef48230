"""BlockSparse construction: layout against a NumPy block-mask oracle, round trips, codes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax import LscError
from lscjax._src.sparse import plan
from lscjax._src.sparse.plan import overflow_width
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.sparse.stack import merged
from lscjax.quant import QArray
from lscjax.sparse import BlockSparse

BLOCKS = st.sampled_from([(1, 1), (2, 3), (4, 4), (8, 2), (8, 8), (16, 16)])
# A few sizes (multiples of the blocks and not) so that eager ops hit XLA's compile cache.
SIZES = st.sampled_from([1, 7, 16, 33, 48])


def block_mask_oracle(m: np.ndarray, block) -> np.ndarray:
    """bool [R, C]: True where the block (input block c, output block r) of matrix m is non-zero."""
    bi, bo = block
    k, n = m.shape
    rows, cols = -(-n // bo), -(-k // bi)
    out = np.zeros((rows, cols), bool)
    for r in range(rows):  # loops over blocks (not elements): an independent oracle
        for c in range(cols):
            out[r, c] = np.any(m[c * bi : (c + 1) * bi, r * bo : (r + 1) * bo] != 0)
    return out


@settings(max_examples=20)
@given(
    k=SIZES,
    n=SIZES,
    block=BLOCKS,
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    dtype=st.sampled_from([np.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_from_dense_layout_and_round_trip(k, n, block, density, dtype, seed):
    w = random_block_kernel(np.random.default_rng(seed), (k, n), block, density).astype(dtype)
    bs = BlockSparse.from_dense(w, block)
    mask = block_mask_oracle(np.asarray(w, np.float32), block)
    counts = np.asarray(bs.counts)
    np.testing.assert_array_equal(counts, mask.sum(axis=1))
    if bs.overflow is None:
        assert bs.kmax == max(1, mask.sum(axis=1).max(initial=0))
    else:  # the rows longer than the width of the fewest slots continue in the overflow
        assert bs.kmax == overflow_width(counts)
        np.testing.assert_array_equal(bs.overflow.rows, np.flatnonzero(counts > bs.kmax))
        assert bs.overflow.indices.shape[1] == counts.max() - bs.kmax
    whole = merged(bs)  # overflow slots back in their rows: one ELL of the longest row
    assert whole.kmax == max(1, mask.sum(axis=1).max(initial=0))
    indices = np.asarray(whole.indices)
    for r in range(mask.shape[0]):
        np.testing.assert_array_equal(indices[r, : counts[r]], np.flatnonzero(mask[r]))
    assert bs.blocks.dtype == jnp.dtype(dtype) and bs.dtype == jnp.dtype(dtype)
    assert bs.indices.dtype == jnp.int32 and bs.counts.dtype == jnp.int32
    padded = ~np.asarray(whole.valid())
    assert not np.any(np.asarray(whole.blocks, np.float32)[padded])  # padded slots hold zeros
    np.testing.assert_array_equal(np.asarray(bs.todense()), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(whole.todense()), np.asarray(w))


def test_overflow_width_by_hand(monkeypatch):
    # Kmax 6 over 8 rows: plain ELL has 48 slots. Width w leaves 8 w slots plus (Kmax - w) for
    # each row longer than w: w = 1 keeps 3 rows in the overflow, 8 + 3 * 5 = 23 slots.
    counts = np.array([6, 5, 2, 1, 1, 1, 1, 1])
    slots = {w: 8 * w + int((counts > w).sum()) * (6 - w) for w in range(1, 6)}
    assert slots == {1: 23, 2: 24, 3: 30, 4: 36, 5: 41}
    assert overflow_width(counts) == 1
    assert overflow_width(np.full(8, 3)) is None  # equal rows: nothing to save
    assert overflow_width(np.array([1, 0, 1])) is None  # Kmax 1
    assert overflow_width(np.zeros(0, int)) is None
    # [2, 1]: width 1 leaves 2 + 1 = 3 of 4 slots, 25% fewer: split at 20%, not at 30%
    assert overflow_width(np.array([2, 1])) == 1
    monkeypatch.setattr(plan, "MIN_OVERFLOW_SAVING", 0.3)
    assert overflow_width(np.array([2, 1])) is None


@pytest.mark.parametrize("shape", [(5, 5, 3, 4), (3, 3, 1, 20), (7, 6, 5)])
def test_conv_kernel_round_trip(shape):
    w = random_block_kernel(np.random.default_rng(0), shape, (4, 4), 0.4)
    bs = BlockSparse.from_dense(w, 4)
    assert bs.shape == shape and bs.matrix_shape == (int(np.prod(shape[:-1])), shape[-1])
    np.testing.assert_array_equal(np.asarray(bs.todense()), w)


def test_empty_rows_density_zero_and_one():
    w = np.zeros((20, 24), np.float32)
    w[3, 1] = 2.0  # one non-zero block in output block row 0; rows 1, 2 empty
    bs = BlockSparse.from_dense(w, 8)
    np.testing.assert_array_equal(np.asarray(bs.counts), [1, 0, 0])
    np.testing.assert_array_equal(np.asarray(bs.todense()), w)
    empty = BlockSparse.from_dense(np.zeros((20, 24), np.float32), 8)
    assert empty.kmax == 1 and not np.any(np.asarray(empty.counts))
    full = BlockSparse.from_dense(np.ones((20, 24), np.float32), 8)
    np.testing.assert_array_equal(np.asarray(full.counts), [3, 3, 3])
    np.testing.assert_array_equal(np.asarray(full.indices), [[0, 1, 2]] * 3)


def test_nbytes_counts_every_array():
    bs = BlockSparse.from_dense(np.ones((64, 64), np.float32), 32)
    assert bs.nbytes == 2 * 2 * 32 * 32 * 4 + 2 * 2 * 4 + 2 * 4
    codes = BlockSparse.from_codes(np.ones((64, 64), np.uint8), np.arange(16, dtype=np.float32), 32)
    assert codes.bits == 4 and codes.blocks.shape == (2, 2, 16, 32)
    assert codes.nbytes == 2 * 2 * 16 * 32 + 2 * 2 * 4 + 2 * 4 + 16 * 4


@settings(max_examples=10)
@given(
    k=SIZES,
    n=SIZES,
    block=st.sampled_from([(2, 2), (4, 3), (8, 8), (16, 4)]),
    bits=st.sampled_from([4, 8]),
    zero_fraction=st.sampled_from([0.0, 0.6, 0.95, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_from_codes_round_trip(k, n, block, bits, zero_fraction, seed):
    rng = np.random.default_rng(seed)
    n_codes = 2**bits
    codebook = np.concatenate([[0.0], rng.standard_normal(n_codes - 1)]).astype(np.float32)
    codes = rng.integers(1, n_codes, (k, n))
    codes[rng.random((k, n)) < zero_fraction] = 0
    bs = BlockSparse.from_codes(codes.astype(np.uint8), codebook, block, bits=bits)
    dense = codebook[codes]
    np.testing.assert_array_equal(np.asarray(bs.counts), block_mask_oracle(dense, block).sum(1))
    expected_rows = block[0] // 2 if bits == 4 else block[0]
    assert bs.blocks.dtype == jnp.uint8 and bs.blocks.shape[2] == expected_rows
    np.testing.assert_array_equal(np.asarray(bs.todense()), dense)


def test_codes_with_nonzero_code_zero_mask_padding():
    """Code 0 need not be 0.0: padded slots (code 0) must still decode to exactly 0."""
    codebook = np.array([0.5, 0.0, 2.0], np.float32)  # code 1 is the zero
    codes = np.ones((8, 8), np.uint8)
    codes[:4, :4] = 0  # block (0, 0): 0.5
    codes[4:, :4] = 2  # block (1, 0): 2.0
    codes[4:, 4:] = 0  # block (1, 1): 0.5; block (0, 1) stays zero (code 1)
    bs = BlockSparse.from_codes(codes, codebook, 4)
    np.testing.assert_array_equal(np.asarray(bs.counts), [2, 1])
    assert np.asarray(bs.blocks)[1, 1].max() == 0  # the padded slot holds code 0 (= 0.5) ...
    np.testing.assert_array_equal(np.asarray(bs.block_values())[1, 1], 0)  # ... decoded as 0
    np.testing.assert_array_equal(np.asarray(bs.todense()), codebook[codes])


@pytest.mark.parametrize(
    "method, bits, codes_shape, codebook, expect_bits",
    [
        ("kmeans", 4, (24, 16), np.array([0.0, 1.0, -2.0, 3.0]), 4),
        ("kmeans", 6, (24, 16), np.linspace(0, 1, 64), 8),
        ("binarize", 1, (24, 16), np.array([-0.5, 0.5]), 4),
        ("binarize", 1, (24, 16), np.tile([[-0.5, 0.5]], (24, 1)), None),
        ("residual", 2, (2, 24, 16), np.array([[0.0, 1, 2, 3], [0.0, 0.1, 0.2, 0.3]]), None),
    ],
)
def test_from_qarray(method, bits, codes_shape, codebook, expect_bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, codebook.shape[-1], codes_shape).astype(np.uint8)
    q = QArray(jnp.asarray(codes), jnp.asarray(codebook, jnp.float32), method, bits, (24, 16))
    bs = BlockSparse.from_qarray(q, (4, 8))
    assert bs.bits == expect_bits
    np.testing.assert_allclose(np.asarray(bs.todense()), np.asarray(q.dequantize()), rtol=1e-6)


@settings(max_examples=10)
@given(
    shape=st.sampled_from([(40, 24), (33, 17), (3, 3, 6, 10), (64, 8)]),
    b=st.sampled_from([2, 4, 8]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_from_encoded_float(shape, b, density, seed):
    w = random_block_kernel(np.random.default_rng(seed), shape, b, density)
    encoded = lscjax.coding.encode(w, "lsc", block=b)
    bs = BlockSparse.from_encoded(encoded)
    assert bs.block == (b, b) and bs.bits is None and bs.shape == shape
    np.testing.assert_array_equal(np.asarray(bs.todense()), lscjax.coding.decode(encoded))
    same = BlockSparse.from_dense(w, b)  # the same layout as from the dense kernel
    np.testing.assert_array_equal(np.asarray(bs.indices), np.asarray(same.indices))
    np.testing.assert_array_equal(np.asarray(bs.blocks), np.asarray(same.blocks))


@pytest.mark.parametrize(
    "codebook, bits, expect_bits",
    [
        (np.array([0.0, 0.5, -1.0, 2.0]), 2, 4),  # code 0 = 0.0: codes stay codes
        (np.concatenate([[0.0], np.linspace(-1, 1, 200)]), 8, 8),
        (np.array([0.25, 0.5, -1.0, 2.0]), 2, 4),  # code 0 is a value: every block is kept
    ],
)
def test_from_encoded_qarray(codebook, bits, expect_bits):
    rng = np.random.default_rng(5)
    kernel = random_block_kernel(rng, (48, 40), 8, 0.3)
    codes = np.where(kernel != 0, rng.integers(1, codebook.size, kernel.shape), 0)
    q = QArray(
        jnp.asarray(codes, jnp.uint8),
        jnp.asarray(codebook, jnp.float32),
        "kmeans",
        bits,
        kernel.shape,
    )
    bs = BlockSparse.from_encoded(lscjax.coding.encode(q, "lsc", block=8))
    assert bs.bits == expect_bits
    if codebook[0] != 0:
        assert np.all(np.asarray(bs.counts) == 6)  # 48 / 8 input blocks in every row
    np.testing.assert_array_equal(np.asarray(bs.todense()), np.asarray(q.dequantize()))


def test_from_encoded_errors():
    with pytest.raises(LscError, match="'lsc'"):
        BlockSparse.from_encoded(lscjax.coding.encode(np.ones((4, 4), np.float32), "csr"))


@pytest.mark.parametrize("overflow", [False, True])
def test_pytree_under_jit_and_static_fields(overflow):
    kernel = np.ones((32, 24), np.float32)  # 3 output block rows of 4 blocks each
    kernel[8:, :16] = 0.0  # rows 0 and 1 keep one block: width 1 and an overflow of row 2
    bs = BlockSparse.from_dense(kernel if overflow else np.ones((32, 24), np.float32), 8)
    assert (bs.overflow is not None) == overflow
    leaves, treedef = jax.tree_util.tree_flatten(bs)
    # blocks, indices, counts (codebook None), and the overflow's blocks, indices and rows
    assert len(leaves) == (6 if overflow else 3)
    doubled = jax.jit(lambda b: jax.tree_util.tree_map(lambda a: a * 2, b))(bs)
    assert doubled.shape == bs.shape and doubled.block == bs.block
    assert jax.tree_util.tree_structure(doubled) == treedef
    np.testing.assert_array_equal(np.asarray(jax.jit(BlockSparse.todense)(bs)), bs.todense())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: BlockSparse.from_dense(np.ones(5, np.float32)), "rank"),
        (lambda: BlockSparse.from_dense(np.ones((4, 4), np.int32)), "floating"),
        (lambda: BlockSparse.from_dense(np.ones((4, 4), np.float32), block=0), "block"),
        (lambda: BlockSparse.from_dense(np.ones((4, 4), np.float32), block=(2, 2, 2)), "block"),
        (lambda: BlockSparse.from_codes(np.full((4, 4), 3), np.zeros(3), 2), r"\[0, 3\)"),
        (lambda: BlockSparse.from_codes(np.ones((4, 4)), np.zeros(32), 2, bits=4), "bits"),
        (lambda: BlockSparse.from_codes(np.ones((4, 4)), np.zeros(4), 3, bits=4), "even"),
        (lambda: jax.jit(BlockSparse.from_dense)(jnp.ones((4, 4))), "concrete"),
    ],
)
def test_errors(call, match):
    with pytest.raises(LscError, match=match):
        call()


def test_row_groups_and_overflow_are_keyword_only():
    """A positional rebuild from the first seven fields cannot pass the plan or overflow."""
    w = np.zeros((16, 16), np.float32)
    w[:4, :] = 1.0  # blocks of 4: one non-zero input block in each output block row
    bs = BlockSparse.from_dense(w, 4)
    fields = (bs.blocks, bs.indices, bs.counts, None, bs.shape, bs.block, None)
    with pytest.raises(TypeError, match="positional"):
        BlockSparse(*fields, bs.row_groups)
    rebuilt = BlockSparse(*fields, row_groups=bs.row_groups, overflow=bs.overflow)
    np.testing.assert_array_equal(np.asarray(rebuilt.todense()), w)
    leaves, treedef = jax.tree.flatten(bs)  # unflattening passes them by keyword
    assert jax.tree.unflatten(treedef, leaves).row_groups == bs.row_groups
