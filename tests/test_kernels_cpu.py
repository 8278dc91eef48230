"""The compiled CPU kernel (`lscjax._src.kernels.cpu`) against the dense float64 product.

The kernel is part of every installation that has a C++ compiler, CI's included, so its absence
fails here rather than skipping: a silent fallback to the XLA path would leave the serving
numbers of docs/results/serving.md unexplained.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_oracle import TOLERANCE, dense_matmul, rel_error

from lscjax._src.errors import LscError
from lscjax._src.kernels import cpu
from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, cpu_kernel_available, matmul, plan, resolve_impl

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU kernel")
F32_TOL = TOLERANCE[jnp.dtype(jnp.float32)]


def test_the_kernel_is_built():
    assert cpu_kernel_available()


@pytest.mark.parametrize("block", [(32, 32), (8, 16), (24, 64), (32, 16)])
@pytest.mark.parametrize("rows", [1, 7, 8, 13, 130])  # below, at and past the 4 / 8 / 12-row tiles
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_float_blocks_match_dense(block, rows, density):
    rng = np.random.default_rng(rows)
    shape = (5 * block[0] - 3, 6 * block[1] - 5)  # partial last blocks on both sides
    kernel = random_block_kernel(rng, shape, block, density)
    w = BlockSparse.from_dense(kernel, block)
    assert plan((rows, shape[0]), w).kernel == "cpu"
    x = rng.standard_normal((rows, shape[0])).astype(np.float32)
    y = jax.jit(lambda x, w: matmul(x, w, impl="cpu"))(x, w)
    assert y.shape == (rows, shape[1]) and y.dtype == jnp.float32
    assert rel_error(y, dense_matmul(x, kernel)) <= F32_TOL


def test_uneven_rows_and_the_overflow_match_dense():
    rng = np.random.default_rng(3)
    kernel = random_block_kernel(rng, (320, 256), 32, 0.15)
    kernel[:, :32] = rng.standard_normal((320, 32))  # one full block row: split into an overflow
    w = BlockSparse.from_dense(kernel, 32)
    assert w.overflow is not None and len(set(np.asarray(w.counts).tolist())) > 2
    x = rng.standard_normal((2, 9, 320)).astype(np.float32)  # leading batch dims
    y = jax.jit(lambda x, w: matmul(x, w, impl="cpu"))(x, w)
    assert rel_error(y, dense_matmul(x, kernel)) <= F32_TOL


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_match_dense(bits):
    rng = np.random.default_rng(bits)
    codebook = np.concatenate([[0.0], rng.standard_normal(2**bits - 1)]).astype(np.float32)
    codes = rng.integers(1, 2**bits, (96, 128))
    codes[random_block_kernel(rng, (96, 128), 32, 0.5) == 0] = 0
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 32, bits=bits)
    assert resolve_impl("auto", w) == "cpu"
    x = rng.standard_normal((40, 96)).astype(np.float32)
    y = jax.jit(lambda x, w: matmul(x, w, impl="cpu"))(x, w)
    assert rel_error(y, dense_matmul(x, codebook[codes])) <= F32_TOL


def test_gradients_equal_the_xla_paths():
    rng = np.random.default_rng(5)
    kernel = random_block_kernel(rng, (96, 64), 32, 0.5)
    w = BlockSparse.from_dense(kernel, 32)
    x = jnp.asarray(rng.standard_normal((6, 96)), jnp.float32)

    def loss(impl):
        return jax.grad(
            lambda x, b: jnp.sin(matmul(x, dataclasses.replace(w, blocks=b), impl=impl)).sum(),
            (0, 1),
        )

    for got, want in zip(loss("cpu")(x, w.blocks), loss("xla")(x, w.blocks), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vmap_and_no_retrace():
    rng = np.random.default_rng(6)
    kernel = random_block_kernel(rng, (64, 64), 16, 0.5)
    w = BlockSparse.from_dense(kernel, 16)
    xs = rng.standard_normal((3, 5, 64)).astype(np.float32)
    traces = []

    @jax.jit
    def f(x, w):
        traces.append(1)
        return jax.vmap(lambda xi: matmul(xi, w, impl="cpu"))(x)

    for _ in range(2):
        assert rel_error(f(xs, w), dense_matmul(xs, kernel)) <= F32_TOL
    assert len(traces) == 1


def test_auto_leaves_what_the_kernel_does_not_take_to_xla():
    w32 = BlockSparse.from_dense(np.ones((64, 64), np.float32), 32)
    w8 = BlockSparse.from_dense(np.ones((64, 64), np.float32), 8)  # output blocks of 8
    assert resolve_impl("auto", w32) == "cpu"
    assert resolve_impl("auto", w32, x_dtype=jnp.bfloat16) == "xla"
    assert resolve_impl("auto", w8) == "xla"
    assert resolve_impl("xla", w32) == "xla"
    with pytest.raises(LscError, match="output blocks of"):
        resolve_impl("cpu", w8)
    with pytest.raises(LscError, match="bfloat16"):
        matmul(jnp.ones((2, 64), jnp.bfloat16), w32, impl="cpu")


def test_the_kernel_refuses_an_index_outside_x():
    values = jnp.ones((2, 1, 32, 32), jnp.float32)
    counts = jnp.array([1, 1], jnp.int32)
    x = jnp.ones((4, 64), jnp.float32)  # two input blocks
    y = cpu.block_matmul(x, values, jnp.array([[1], [0]], jnp.int32), counts)
    np.testing.assert_allclose(y, np.full((4, 64), 32.0))
    with pytest.raises(Exception, match=r"block index 2 outside \[0, 2\)"):
        cpu.block_matmul(x, values, jnp.array([[1], [2]], jnp.int32), counts).block_until_ready()


def test_counts_past_kmax_are_clamped_and_padding_is_not_read():
    values = jnp.stack([jnp.ones((2, 16, 16)), jnp.full((2, 16, 16), jnp.nan)])  # row 1: NaN pad
    indices = jnp.array([[0, 1], [1, 0]], jnp.int32)
    x = jnp.ones((3, 32), jnp.float32)
    y = cpu.block_matmul(x, values.at[1, 0].set(2.0), indices, jnp.array([5, 1], jnp.int32))
    np.testing.assert_allclose(y[:, :16], 32.0)  # both slots of row 0 (5 clamped to 2)
    np.testing.assert_allclose(y[:, 16:], 32.0)  # only slot 0 of row 1: the NaN slot unread
