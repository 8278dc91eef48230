"""sparse.matmul (XLA path) against the dense product of the decoded weight; grads; vmap; retrace."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lscjax import LscError
from lscjax._src.kernels import reference
from lscjax._src.kernels.reference import TOLERANCE
from lscjax._src.sparse import matmul as sparse_matmul
from lscjax._src.sparse.convert import split_overflow
from lscjax._src.sparse.plan import overflow_width, row_groups
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.sparse.stack import merged
from lscjax.sparse import BlockSparse, matmul, resolve_impl, stack

SIZES = st.sampled_from([1, 7, 16, 33, 48])
BATCHES = st.sampled_from([(), (1,), (5,), (2, 3)])


def rel_error(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(
        np.max(np.abs(y - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-30)
    )


def dense_ref(x, w) -> np.ndarray:
    """x @ W in float64 NumPy: the oracle."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64)


_jit_matmul = jax.jit(matmul, static_argnames=("impl", "interpret"))


@settings(max_examples=25)
@given(
    k=SIZES,
    n=SIZES,
    block=st.sampled_from([(1, 1), (4, 4), (8, 2), (16, 16)]),
    density=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    batch=BATCHES,
    seed=st.integers(0, 2**16),
)
def test_matmul_matches_dense(k, n, block, density, dtype, batch, seed):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(random_block_kernel(rng, (k, n), block, density), dtype)
    x = jnp.asarray(rng.standard_normal((*batch, k)), dtype)
    y = _jit_matmul(x, BlockSparse.from_dense(w, block))
    assert y.shape == (*batch, n) and y.dtype == dtype
    assert rel_error(y, dense_ref(x, w)) <= TOLERANCE[jnp.dtype(dtype)]


@settings(max_examples=15)
@given(
    k=SIZES,
    n=SIZES,
    block=st.sampled_from([(2, 2), (4, 8), (16, 16)]),
    bits=st.sampled_from([4, 8]),
    zero_fraction=st.sampled_from([0.0, 0.9, 1.0]),
    batch=BATCHES,
    seed=st.integers(0, 2**16),
)
def test_matmul_codes_match_dense(k, n, block, bits, zero_fraction, batch, seed):
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal(2**bits).astype(np.float32)
    codebook[0] = 0.0
    codes = rng.integers(1, 2**bits, (k, n))
    codes[rng.random((k, n)) < zero_fraction] = 0
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, block, bits=bits)
    x = rng.standard_normal((*batch, k)).astype(np.float32)
    y = _jit_matmul(x, w)
    assert y.dtype == jnp.float32
    assert rel_error(y, dense_ref(x, codebook[codes])) <= TOLERANCE[jnp.dtype(jnp.float32)]


def _kept_blocks_dense(w: BlockSparse, blocks, codebook=None):
    """The dense weight as a differentiable function of the block values (scatter: independent)."""
    return BlockSparse(blocks, w.indices, w.counts, codebook, w.shape, w.block, w.bits).todense()


@pytest.mark.parametrize(
    "impl, shape, block, batch",
    [
        ("xla", (40, 24), (8, 8), (3,)),
        ("xla", (33, 17), (4, 16), ()),
        ("pallas_gpu", (33, 17), (4, 16), ()),
        ("pallas_tpu", (40, 24), (8, 8), (3,)),
    ],
)
@pytest.mark.parametrize("temp_bytes", [2**30, 64])  # 64: x's rows in pieces of one
@pytest.mark.parametrize("long_row", [False, True])  # True: one full row, split into an overflow
def test_grads_match_dense_vjp(set_trace_constant, impl, shape, block, batch, temp_bytes, long_row):
    set_trace_constant("lscjax._src.sparse.plan.TEMP_BYTES", temp_bytes)
    rng = np.random.default_rng(0)
    kernel = random_block_kernel(rng, shape, block, 0.3)
    if long_row:
        kernel[:, : block[1]] = rng.standard_normal((shape[0], block[1]))
    w = BlockSparse.from_dense(kernel, block)
    assert w.overflow is not None or not long_row
    x = jnp.asarray(rng.standard_normal((*batch, shape[0])), jnp.float32)
    g = jnp.asarray(rng.standard_normal((*batch, shape[1])), jnp.float32)

    def with_values(values):  # w with new float values in its rows and its overflow rows
        blocks, overflow_blocks = values
        overflow = w.overflow and dataclasses.replace(w.overflow, blocks=overflow_blocks)
        return dataclasses.replace(w, blocks=blocks, overflow=overflow)

    def sparse_fn(x, values):
        return matmul(x, with_values(values), impl=impl, interpret=True)

    def dense_fn(x, values):
        return x @ with_values(values).todense()

    values = (w.blocks, w.overflow and w.overflow.blocks)
    y, pull = jax.vjp(jax.jit(sparse_fn), x, values)
    y_ref, pull_ref = jax.vjp(dense_fn, x, values)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(pull(g)), jax.tree.leaves(pull_ref(g)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("temp_bytes", [2**30, 64])
def test_codebook_grads_match_dense_vjp(set_trace_constant, bits, temp_bytes):
    set_trace_constant("lscjax._src.sparse.plan.TEMP_BYTES", temp_bytes)
    rng = np.random.default_rng(1)
    codebook = jnp.asarray(np.concatenate([[0.0], rng.standard_normal(2**bits - 1)]), jnp.float32)
    codes = rng.integers(1, 2**bits, (24, 20))
    codes[rng.random((24, 20)) < 0.7] = 0
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 4, bits=bits)
    x = jnp.asarray(rng.standard_normal((5, 24)), jnp.float32)

    def sparse_loss(x, cb):
        bs = BlockSparse(w.blocks, w.indices, w.counts, cb, w.shape, w.block, w.bits)
        return jnp.sum(jnp.sin(matmul(x, bs)))

    def dense_loss(x, cb):  # only existing blocks count: fully zero blocks are not stored
        return jnp.sum(jnp.sin(x @ _kept_blocks_dense(w, w.blocks, cb)))

    got = jax.jit(jax.grad(sparse_loss, argnums=(0, 1)))(x, codebook)
    want = jax.grad(dense_loss, argnums=(0, 1))(x, codebook)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_padded_slots_get_zero_gradient():
    w = np.zeros((16, 16), np.float32)
    w[:8, :8] = 1.0
    w[:, 8:] = 2.0  # output block row 1 has 2 blocks, row 0 has 1: row 0 slot 1 is padding
    bs = merged(BlockSparse.from_dense(w, 8))  # one ELL: the split would leave no padding
    x = jnp.ones((2, 16))
    with_values = lambda v: dataclasses.replace(bs, blocks=v)  # noqa: E731
    grads = jax.grad(lambda v: jnp.sum(matmul(x, with_values(v))))(bs.blocks)
    assert not np.asarray(bs.valid())[0, 1]
    np.testing.assert_array_equal(grads[0, 1], 0)
    assert np.all(np.asarray(grads[1]) != 0)


def test_padded_overflow_slots_get_zero_gradient():
    w = np.zeros((64, 40), np.float32)
    w[:8, :24] = 1.0  # output block rows 0-2: one block each
    w[:, 24:32] = 2.0  # row 3: all 8 blocks
    w[:48, 32:] = 3.0  # row 4: 6 blocks
    bs = BlockSparse.from_dense(w, 8)
    assert bs.kmax == 1 and bs.overflow.rows.tolist() == [3, 4]  # 5 + 2 * 7 of 40 slots
    x = jnp.ones((2, 64))
    loss = lambda b: jnp.sum(matmul(x, b) ** 2)  # noqa: E731
    grads = jax.grad(loss, allow_int=True)(bs).overflow.blocks  # [2, 7, 8, 8]
    np.testing.assert_array_equal(grads[1, 5:], 0)  # row 4's padded slots 5, 6
    assert np.all(np.asarray(grads[0]) != 0) and np.all(np.asarray(grads[1, :5]) != 0)
    dense_grad = jax.grad(lambda k: jnp.sum((x @ k) ** 2))(jnp.asarray(w))
    np.testing.assert_allclose(grads[0, :, :, 0], dense_grad[8:, 24:32:8].reshape(7, 8))


def _scaled(w: BlockSparse, s) -> BlockSparse:
    """Float-valued w with every block value (its overflow's too) times s."""
    overflow = w.overflow and dataclasses.replace(w.overflow, blocks=w.overflow.blocks * s)
    return dataclasses.replace(w, blocks=w.blocks * s, overflow=overflow)


def test_vmap_over_inputs_and_weight_sets():
    rng = np.random.default_rng(2)
    w = BlockSparse.from_dense(random_block_kernel(rng, (32, 24), 8, 0.5), 8)
    xs = jnp.asarray(rng.standard_normal((4, 3, 32)), jnp.float32)
    y = jax.jit(jax.vmap(lambda x: matmul(x, w)))(xs)
    np.testing.assert_allclose(y, dense_ref(xs, w.todense()), rtol=1e-5, atol=1e-5)

    def scaled_product(s):  # a batch of weight sets sharing one layout
        return matmul(xs[0], _scaled(w, s))

    scaled = jax.vmap(scaled_product)(jnp.arange(1.0, 4.0))
    for i, s in enumerate([1.0, 2.0, 3.0]):
        np.testing.assert_allclose(
            scaled[i], s * dense_ref(xs[0], w.todense()), rtol=1e-5, atol=1e-4
        )


def test_no_retrace_across_calls():
    rng = np.random.default_rng(3)
    kernel = random_block_kernel(rng, (48, 40), 16, 0.5)
    w = BlockSparse.from_dense(kernel, 16)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, w):
        return matmul(x, w)

    for scale in (1.0, 2.0, 3.0):
        x = jnp.asarray(rng.standard_normal((4, 48)), jnp.float32)
        w_scaled = _scaled(w, scale)
        np.testing.assert_allclose(
            f(x, w_scaled), dense_ref(x, kernel * scale), rtol=1e-5, atol=1e-4
        )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU choices of impl='auto'")
def test_resolve_impl_on_cpu():
    w = BlockSparse.from_dense(np.ones((8, 8), np.float32), 4)
    assert resolve_impl("auto", w) == "xla"
    assert resolve_impl("pallas", w, interpret=True) == "pallas_gpu"
    assert resolve_impl("pallas_tpu", w, interpret=True) == "pallas_tpu"


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.ones((2, 7), np.float32), {}, "input size 8"),
        (np.ones((2, 8), np.int32), {}, "floating"),
        (np.ones((2, 8), np.float32), {"impl": "cuda"}, "impl must be"),
        (np.ones((2, 8), np.float32), {"impl": "pallas"}, "interpret=True"),
    ],
)
def test_errors(x, kwargs, match):
    w = BlockSparse.from_dense(np.ones((8, 8), np.float32), 4)
    with pytest.raises(LscError, match=match):
        matmul(x, w, **kwargs)
    with pytest.raises(LscError, match="BlockSparse"):
        matmul(np.ones((2, 8), np.float32), np.ones((8, 8), np.float32))


def test_row_groups_by_hand(monkeypatch):
    """Rows in descending count order, cut into groups padded to their own longest row."""
    monkeypatch.setattr("lscjax._src.sparse.plan.MIN_GROUP_ROWS", 2)
    counts = np.array([1, 5, 3, 0, 2, 4])  # sorted: 5 4 | 3 2 | 1 0
    equal = np.full(6, 3)
    for coded in (False, True):
        assert row_groups(counts, slot_bytes=4, coded=coded) == (5, 3, 1)
        assert row_groups(np.zeros(0, int), slot_bytes=4, coded=coded) == (1,)
    assert row_groups(equal, slot_bytes=4, coded=True) == (3, 3, 3)
    assert row_groups(equal, slot_bytes=4, coded=False) == (3,)  # float rows multiplied in place
    monkeypatch.setattr("lscjax._src.sparse.plan.TEMP_BYTES", 5 * 4)  # one Kmax-padded row
    assert row_groups(counts, slot_bytes=4, coded=False) == (5, 4, 3, 2, 1, 1)  # a row per group
    assert row_groups(equal, slot_bytes=4, coded=True) == (3, 3, 3, 3, 3, 3)  # 12 B > 20 / 2
    assert row_groups(equal, slot_bytes=4, coded=False) == (3,)  # in place: no temporary


@pytest.mark.parametrize("temp_bytes", [1, 3000, 2**30])
@pytest.mark.parametrize("bits", [None, 4])
def test_row_group_plans_match_dense(monkeypatch, set_trace_constant, temp_bytes, bits):
    """Every plan (one group, a few, one row each; reordered or not) gives x @ W, whether x's
    rows are gathered at once or in pieces (of 1 row at 1 byte, a few at 3000, the last padded),
    and for float values also with x of few rows (rows kept in stored order)."""
    set_trace_constant("lscjax._src.sparse.plan.TEMP_BYTES", temp_bytes)
    set_trace_constant("lscjax._src.sparse.matmul.FLOAT_IN_PLACE_MAX_ROWS", 4)
    monkeypatch.setattr("lscjax._src.sparse.plan.MIN_GROUP_ROWS", 2)
    rng = np.random.default_rng(4)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    mask = random_block_kernel(rng, (40, 36), 4, 0.4) != 0  # R = 9 rows of unequal length
    codes = rng.integers(1, 16, (40, 36)) * mask
    kernel = codebook[codes]
    if bits is None:
        w = BlockSparse.from_dense(kernel, 4)
    else:
        w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 4, bits=4)
    assert min(w.row_groups) < w.kmax  # rows differ in length: the plan reorders
    unplanned = dataclasses.replace(w, row_groups=None)
    in_place = (w.kmax,) if bits is None else w.row_groups  # float rows are not copied
    assert sparse_matmul._plan(w, 3) == in_place and sparse_matmul._plan(w, 7) == w.row_groups
    for m in (3, 7):  # <= and > FLOAT_IN_PLACE_MAX_ROWS
        x = rng.standard_normal((m, 40)).astype(np.float32)
        for v in (w, unplanned):
            y = jax.jit(matmul)(x, v)
            assert rel_error(y, dense_ref(x, kernel)) <= TOLERANCE[jnp.dtype(jnp.float32)]


@pytest.mark.parametrize("slot_form_max_rows", [0, 2**62])  # the row form always; never
@pytest.mark.parametrize("bits", [None, 4])
def test_product_forms_match_dense(set_trace_constant, slot_form_max_rows, bits):
    """The slot- and row-batched products (reference.block_matmul) both give x @ W, for x of 1
    row and of several, with rows of unequal length (padded slots) and coded blocks."""
    set_trace_constant("lscjax._src.kernels.reference.SLOT_FORM_MAX_ROWS", slot_form_max_rows)
    rng = np.random.default_rng(5)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    codes = rng.integers(1, 16, (40, 36)) * (random_block_kernel(rng, (40, 36), 4, 0.4) != 0)
    if bits is None:
        w = BlockSparse.from_dense(codebook[codes], 4)
    else:
        w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 4, bits=4)
    assert len(set(np.asarray(w.counts).tolist())) > 1
    for m in (1, 6):
        x = rng.standard_normal((m, 40)).astype(np.float32)
        y = jax.jit(matmul)(x, w)
        assert rel_error(y, dense_ref(x, codebook[codes])) <= TOLERANCE[jnp.dtype(jnp.float32)]


def test_many_rows_match_dense():
    """x of more than SLOT_FORM_MAX_ROWS rows (the row form; conv patches, big batches) gives
    x @ W."""
    rng = np.random.default_rng(6)
    kernel = random_block_kernel(rng, (40, 36), 8, 0.5)
    x = rng.standard_normal((reference.SLOT_FORM_MAX_ROWS + 77, 40)).astype(np.float32)
    y = jax.jit(matmul)(x, BlockSparse.from_dense(kernel, 8))
    assert rel_error(y, dense_ref(x, kernel)) <= TOLERANCE[jnp.dtype(jnp.float32)]


@pytest.mark.parametrize("bits", [None, 4])
def test_stacked_weights_under_vmap_and_scan(bits):
    """`stack` pads weights of different Kmax and plans to one layout: vmap over the weight
    sets and lax.scan over layers give every weight's own dense product."""
    rng = np.random.default_rng(7)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    kernels, weights = [], []
    for density in (0.2, 0.5, 0.9):  # different Kmax and row-group plans
        codes = rng.integers(1, 16, (32, 32)) * (
            random_block_kernel(rng, (32, 32), 4, density) != 0
        )
        if density == 0.2:  # a full output block row: float values get an overflow
            codes[:, :4] = rng.integers(1, 16, (32, 4))
        kernels.append(codebook[codes] / 4)
        if bits is None:
            weights.append(BlockSparse.from_dense(kernels[-1], 4))
        else:
            weights.append(BlockSparse.from_codes(codes.astype(np.uint8), codebook / 4, 4, bits=4))
    assert len({w.kmax for w in weights}) > 1
    assert (weights[0].overflow is None) == (bits is not None)
    stacked = stack(weights)  # overflow slots back in their rows
    assert stacked.overflow is None
    assert stacked.blocks.shape[:3] == (3, 8, max(merged(w).kmax for w in weights))
    for i, w in enumerate(weights):
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
        np.testing.assert_array_equal(one.todense(), w.todense())
    xs = jnp.asarray(rng.standard_normal((3, 5, 32)), jnp.float32)
    ys = jax.jit(jax.vmap(matmul))(xs, stacked)
    for i, kernel in enumerate(kernels):
        assert rel_error(ys[i], dense_ref(xs[i], kernel)) <= 1e-5

    def layer(y, w):
        return jnp.tanh(matmul(y, w)), None

    got, _ = jax.jit(lambda x, ws: jax.lax.scan(layer, x, ws))(xs[0], stacked)
    want = np.asarray(xs[0], np.float64)
    for kernel in kernels:
        want = np.tanh(dense_ref(want, kernel))
    assert rel_error(got, want) <= 1e-5


def test_rebuilt_without_overflow_is_refused():
    kernel = np.zeros((64, 16), np.float32)
    kernel[:, :8] = 1.0  # output block row 0: 8 blocks, row 1: 1 block
    kernel[:8, 8:] = 2.0
    w = BlockSparse.from_dense(kernel, 8)
    assert w.kmax == 1 and w.overflow.rows.tolist() == [0]
    x = jnp.ones((2, 64))
    np.testing.assert_allclose(matmul(x, w), x @ kernel)
    dropped = BlockSparse(w.blocks, w.indices, w.counts, None, w.shape, w.block)
    with pytest.raises(LscError, match="8 blocks but Kmax is 1.*overflow"):
        matmul(x, dropped)
    np.testing.assert_allclose(jax.jit(matmul)(x, merged(w)), x @ kernel)


@pytest.mark.parametrize("bits", [4, 8])
def test_coded_overflow_matches_dense(bits):
    """The constructors split float values only; a coded layout split by hand (what the
    product code supports for every storage) gives the same product and codebook gradient."""
    rng = np.random.default_rng(5)
    codebook = jnp.asarray(np.concatenate([[0.0], rng.standard_normal(15)]), jnp.float32)
    codes = rng.integers(1, 16, (48, 24)) * (random_block_kernel(rng, (48, 24), 4, 0.2) != 0)
    codes[:, 8:12] = rng.integers(1, 16, (48, 4))  # output block row 2 is full
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 4, bits=bits)
    split = split_overflow(w, overflow_width(w.counts))
    assert split.overflow is not None and split.kmax < w.kmax
    np.testing.assert_array_equal(split.todense(), w.todense())
    x = jnp.asarray(rng.standard_normal((3, 48)), jnp.float32)

    def sparse_loss(x, cb, impl):
        y = matmul(x, dataclasses.replace(split, codebook=cb), impl=impl, interpret=True)
        return jnp.sum(jnp.sin(y))

    def dense_loss(x, cb):  # the unsplit layout: code 0 counts inside stored blocks only
        return jnp.sum(jnp.sin(x @ dataclasses.replace(w, codebook=cb).todense()))

    want = jax.grad(dense_loss, argnums=(0, 1))(x, codebook)
    for impl in ("xla", "pallas_gpu"):
        got = jax.grad(sparse_loss, argnums=(0, 1))(x, codebook, impl)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        y = matmul(x, split, impl=impl, interpret=True)
        np.testing.assert_allclose(y, x @ codebook[codes], rtol=1e-4, atol=1e-5)


def test_stack_errors():
    w = BlockSparse.from_dense(np.ones((8, 8), np.float32), 4)
    with pytest.raises(LscError, match="non-empty"):
        stack([])
    with pytest.raises(LscError, match="weight 1"):
        stack([w, BlockSparse.from_dense(np.ones((8, 12), np.float32), 4)])
    with pytest.raises(LscError, match="weight 1"):
        stack([w, BlockSparse.from_dense(np.ones((8, 8), np.float32), 2)])
