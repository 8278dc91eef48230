"""Every block-sparse product implementation against one dense oracle (tests/kernel_oracle.py).

One test body runs over every implementation: the XLA path in its slot and row forms, and the
Pallas GPU and TPU kernels in interpret mode, each on the operands it takes (float values, or
packed 4-bit codes and their codebook for the kernels that dequantize inside).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_oracle import TOLERANCE, dense_matmul, rel_error

from lscjax._src.kernels import pallas_gpu, pallas_tpu, xla
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.sparse.stack import merged
from lscjax.sparse import BlockSparse, matmul


def _pallas(kernel):
    def product(x, w: BlockSparse):
        if w.bits == 4:  # dequantized inside the kernel
            return kernel.block_matmul(x, w.blocks, w.indices, w.counts, w.codebook, interpret=True)
        return kernel.block_matmul(x, w.block_values(), w.indices, w.counts, interpret=True)

    return product


def _xla(form):
    return lambda x, w: xla.block_matmul(x, w.block_values(), w.indices, form=form)


# Each takes x [M, C * b_in] and a plain ELL BlockSparse (no overflow) -> [M, R * b_out].
IMPLEMENTATIONS = {
    "xla_slot": _xla("slot"),
    "xla_row": _xla("row"),
    "pallas_gpu": _pallas(pallas_gpu),
    "pallas_tpu": _pallas(pallas_tpu),
}


def _padded_x(rng, m, k, block, dtype):
    """x [m, k] zero-padded to whole input blocks, and x itself."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    cols = -(-k // block[0])
    return jnp.asarray(np.pad(x, ((0, 0), (0, cols * block[0] - k))), dtype), jnp.asarray(x, dtype)


def _check(name, x_padded, x, w, kernel, dtype):
    got = IMPLEMENTATIONS[name](x_padded, w)[:, : kernel.shape[1]]
    assert got.dtype == jnp.dtype(dtype)
    assert rel_error(got, dense_matmul(x, kernel)) <= TOLERANCE[jnp.dtype(dtype)]


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
@settings(max_examples=4)
@given(
    m=st.sampled_from([1, 5, 16, 70]),
    shape=st.sampled_from([(32, 48), (40, 17), (64, 64)]),
    block=st.sampled_from([(8, 8), (16, 16), (16, 8)]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_float_values_match_dense(name, m, shape, block, density, dtype, seed):
    rng = np.random.default_rng(seed)
    kernel = jnp.asarray(random_block_kernel(rng, shape, block, density), dtype)
    w = merged(BlockSparse.from_dense(kernel, block))  # one ELL: the kernels multiply one
    x_padded, x = _padded_x(rng, m, shape[0], block, dtype)
    _check(name, x_padded, x, w, kernel, dtype)


@pytest.mark.parametrize("name", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("m, block, zero_fraction", [(3, (16, 16), 0.8), (20, (8, 16), 0.0)])
def test_4bit_codes_match_dense(name, m, block, zero_fraction):
    rng = np.random.default_rng(7)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    codes = rng.integers(1, 16, (48, 40))
    codes[rng.random((48, 40)) < zero_fraction] = 0
    codes[:, 32:] = 0  # an empty output block row for b_out = 8 and 16
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, block, bits=4)
    x_padded, x = _padded_x(rng, m, 48, block, jnp.float32)
    _check(name, x_padded, x, w, codebook[codes], jnp.float32)


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_matmul_dispatch_matches_dense(impl, bits):
    """matmul(impl=pallas_*) on every storage (8-bit codes are dequantized before the kernel),
    traced once."""
    rng = np.random.default_rng(11)
    if bits is None:
        kernel = random_block_kernel(rng, (50, 30), 16, 0.4)
        w = BlockSparse.from_dense(kernel, 16)
    else:
        codes = rng.integers(0, 2**bits, (50, 30)) * (rng.random((50, 30)) < 0.3)
        codebook = np.linspace(0.0, 1.0, 2**bits, dtype=np.float32)
        kernel = codebook[codes]
        w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 16, bits=bits)
    x = jnp.asarray(rng.standard_normal((2, 3, 50)), jnp.float32)
    chex.clear_trace_counter()  # the counter is keyed by code: shared by the parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, w):
        return matmul(x, w, impl=impl, interpret=True)

    for step in range(2):
        got = f(x + step, w)
        assert rel_error(got, dense_matmul(x + step, kernel)) <= TOLERANCE[jnp.dtype(jnp.float32)]
