"""Pallas GPU and TPU kernels in interpret mode against the lax reference (the XLA path)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lscjax._src.kernels import pallas_gpu, pallas_tpu, reference
from lscjax._src.kernels.reference import TOLERANCE
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.sparse.stack import merged
from lscjax.sparse import BlockSparse, matmul

KERNELS = {"pallas_gpu": pallas_gpu, "pallas_tpu": pallas_tpu}


def rel_error(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(
        np.max(np.abs(y - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-30)
    )


def _operands(rng, m, shape, block, density, dtype):
    """x and a plain ELL layout (overflow merged back: the kernels multiply one ELL)."""
    w = merged(
        BlockSparse.from_dense(
            jnp.asarray(random_block_kernel(rng, shape, block, density), dtype), block
        )
    )
    cols = -(-shape[0] // block[0])
    x = np.zeros((m, cols * block[0]), np.float32)
    x[:, : shape[0]] = rng.standard_normal((m, shape[0]))
    return jnp.asarray(x, dtype), w


@pytest.mark.parametrize("name", sorted(KERNELS))
@settings(max_examples=4)
@given(
    m=st.sampled_from([1, 5, 16, 70]),
    shape=st.sampled_from([(32, 48), (40, 17), (64, 64)]),
    block=st.sampled_from([(8, 8), (16, 16), (16, 8)]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_kernel_matches_reference(name, m, shape, block, density, dtype, seed):
    x, w = _operands(np.random.default_rng(seed), m, shape, block, density, dtype)
    want = reference.block_matmul(x, w.blocks, w.indices)
    got = KERNELS[name].block_matmul(x, w.blocks, w.indices, w.counts, interpret=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_error(got, want) <= TOLERANCE[jnp.dtype(dtype)]


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("m, block, zero_fraction", [(3, (16, 16), 0.8), (20, (8, 16), 0.0)])
def test_kernel_4bit_codes_match_reference(name, m, block, zero_fraction):
    rng = np.random.default_rng(7)
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    codes = rng.integers(1, 16, (48, 40))
    codes[rng.random((48, 40)) < zero_fraction] = 0
    codes[:, 32:] = 0  # an empty output block row for b_out = 8 and 16
    w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, block, bits=4)
    x = jnp.asarray(rng.standard_normal((m, 48)), jnp.float32)
    want = reference.block_matmul(x, w.block_values(), w.indices)
    got = KERNELS[name].block_matmul(x, w.blocks, w.indices, w.counts, w.codebook, interpret=True)
    assert rel_error(got, want) <= TOLERANCE[jnp.dtype(jnp.float32)]
    assert rel_error(got[:, :40], x @ codebook[codes]) <= TOLERANCE[jnp.dtype(jnp.float32)]


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_matmul_dispatch_matches_xla(impl, bits):
    """matmul(impl=pallas_*) on every storage (8-bit codes are dequantized before the kernel)."""
    rng = np.random.default_rng(11)
    if bits is None:
        w = BlockSparse.from_dense(random_block_kernel(rng, (50, 30), 16, 0.4), 16)
    else:
        codes = rng.integers(0, 2**bits, (50, 30)) * (rng.random((50, 30)) < 0.3)
        codebook = np.linspace(0.0, 1.0, 2**bits, dtype=np.float32)
        w = BlockSparse.from_codes(codes.astype(np.uint8), codebook, 16, bits=bits)
    x = jnp.asarray(rng.standard_normal((2, 3, 50)), jnp.float32)
    chex.clear_trace_counter()  # the counter is keyed by code: shared by the parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, w):
        return matmul(x, w, impl=impl, interpret=True)

    want = matmul(x, w, impl="xla")
    for step in range(2):
        assert rel_error(f(x + step, w), matmul(x + step, w, impl="xla")) <= 1e-4
    assert rel_error(f(x, w), want) <= 1e-4
