"""sparse.conv against lax.conv_general_dilated on the dense kernel (LeNet-5 layers and more)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lscjax import LscError
from lscjax._src.sparse.conv import patches
from lscjax._src.sparse.random import random_block_kernel
from lscjax.sparse import BlockSparse, conv


def dense_conv(x, kernel, strides, padding, kernel_dilation=1):
    nd = kernel.ndim - 2
    spatial = {1: "W", 2: "HW"}[nd]
    return lax.conv_general_dilated(
        x,
        kernel,
        (strides,) * nd if isinstance(strides, int) else strides,
        padding,
        rhs_dilation=(kernel_dilation,) * nd,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        precision=lax.Precision.HIGHEST,
    )


@pytest.mark.parametrize(
    "x_shape, kernel_shape, strides, padding, block, dilation",
    [
        ((2, 28, 28, 1), (5, 5, 1, 20), 1, "VALID", (8, 8), 1),  # LeNet-5 conv1
        ((2, 12, 12, 20), (5, 5, 20, 50), 1, "VALID", (16, 16), 1),  # LeNet-5 conv2
        ((1, 11, 13, 6), (3, 3, 6, 7), 2, "SAME", (4, 4), 1),
        ((3, 9, 10, 5), (3, 2, 5, 9), (2, 1), ((1, 2), (0, 1)), (6, 4), 1),
        ((2, 10, 10, 3), (3, 3, 3, 4), 1, "SAME", (4, 4), 2),
        ((2, 17, 4), (3, 4, 6), 1, "SAME", (4, 4), 1),  # 1-D
    ],
)
def test_conv_matches_dense(x_shape, kernel_shape, strides, padding, block, dilation):
    rng = np.random.default_rng(0)
    kernel = random_block_kernel(rng, kernel_shape, block, 0.4)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = BlockSparse.from_dense(kernel, block)
    f = jax.jit(lambda x, w: conv(x, w, strides=strides, padding=padding, kernel_dilation=dilation))
    want = dense_conv(x, kernel, strides, padding, dilation)
    got = f(x, w)
    assert got.shape == want.shape
    # float32 sums of up to 500 products in another order: error relative to the output scale
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("padding", ["VALID", "SAME", ((2, 0), (1, 3))])
def test_input_dilation_and_patches_match_lax(padding):
    rng = np.random.default_rng(2)
    kernel = random_block_kernel(rng, (3, 2, 3, 5), 4, 0.6)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)), jnp.float32)
    explicit = ((1, 1), (0, 2)) if isinstance(padding, str) else padding
    got = conv(x, BlockSparse.from_dense(kernel, 4), padding=explicit, input_dilation=2, strides=2)
    want = lax.conv_general_dilated(
        x,
        kernel,
        (2, 2),
        explicit,
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ours = patches(x, (3, 2), (1, 2), padding, (1, 1), (2, 1))
    theirs = lax.conv_general_dilated_patches(
        x,
        (3, 2),
        (1, 2),
        padding,
        rhs_dilation=(2, 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )  # channel-major features (C, kh, kw)
    theirs = theirs.reshape(*theirs.shape[:-1], 3, 6).swapaxes(-1, -2).reshape(theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_conv_grad_wrt_input_matches_dense():
    rng = np.random.default_rng(1)
    kernel = random_block_kernel(rng, (3, 3, 4, 8), 4, 0.5)
    w = BlockSparse.from_dense(kernel, 4)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 4)), jnp.float32)
    got = jax.grad(lambda x: jnp.sum(conv(x, w, padding="SAME") ** 2))(x)
    want = jax.grad(lambda x: jnp.sum(dense_conv(x, kernel, 1, "SAME") ** 2))(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_errors():
    w = BlockSparse.from_dense(np.ones((3, 3, 4, 8), np.float32), 4)
    with pytest.raises(LscError, match="does not match"):
        conv(jnp.ones((1, 8, 8, 3)), w)
    with pytest.raises(LscError, match="window dims"):
        conv(jnp.ones((1, 8)), BlockSparse.from_dense(np.ones((8, 8), np.float32), 4))
    with pytest.raises(LscError, match="input_dilation"):
        conv(jnp.ones((1, 8, 8, 4)), w, padding="SAME", input_dilation=2)
    with pytest.raises(LscError, match="strides"):
        conv(jnp.ones((1, 8, 8, 4)), w, strides=(1, 1, 1))
