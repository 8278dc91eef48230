"""lscjax.flax (NNX): module swap keeps outputs and gradients of the dense model."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lscjax import LscError
from lscjax._src.sparse.random import random_block_kernel
from lscjax.flax import BlockSparseConv, BlockSparseLinear, to_block_sparse_nnx


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 6, (5, 5), strides=2, padding="SAME", rngs=rngs)
        self.layers = nnx.List(
            [nnx.Linear(7 * 7 * 6, 40, rngs=rngs), nnx.Linear(40, 10, use_bias=False, rngs=rngs)]
        )

    def __call__(self, x):
        x = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        return self.layers[1](nnx.relu(self.layers[0](x)))


def _pruned_net() -> Net:
    """Net pruned by magnitude; layers/0 also to 20% of its 8 x 8 blocks but for a full first
    output block row, so its BlockSparse at block 8 has an overflow."""
    net = Net(nnx.Rngs(0))
    for layer in (net.conv, net.layers[0], net.layers[1]):
        w = layer.kernel[...]
        layer.kernel[...] = jnp.where(jnp.abs(w) > jnp.std(w), w, 0.0)
    keep = np.random.default_rng(0).random((37, 5)) < 0.2  # [input blocks, output blocks]
    keep[:, 0] = True
    net.layers[0].kernel[...] *= np.kron(keep, np.ones((8, 8)))[:294, :40]
    return net


def test_swap_keeps_outputs_under_nnx_jit():
    net = _pruned_net()
    x = jax.random.normal(jax.random.key(1), (3, 14, 14, 1))
    before = net(x)
    sparse = to_block_sparse_nnx(net, block=8, max_density=1.0)
    assert isinstance(sparse.conv, BlockSparseConv)
    assert all(isinstance(layer, BlockSparseLinear) for layer in sparse.layers)
    assert isinstance(net.conv, nnx.Conv)  # the original model is left unchanged
    assert sparse.layers[0].kernel().overflow is not None
    np.testing.assert_array_equal(sparse.layers[0].kernel().todense(), net.layers[0].kernel[...])

    @nnx.jit
    @chex.assert_max_traces(n=1)
    def forward(model, x):
        return model(x)

    for step in range(2):
        np.testing.assert_allclose(forward(sparse, x + step), net(x + step), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse(x), before, rtol=1e-5, atol=1e-5)


def test_where_selects_layers():
    net = _pruned_net()
    sparse = to_block_sparse_nnx(
        net, block=4, where=lambda path, _: path == "layers/1", max_density=1.0
    )
    assert isinstance(sparse.conv, nnx.Conv) and isinstance(sparse.layers[0], nnx.Linear)
    assert isinstance(sparse.layers[1], BlockSparseLinear)


def test_grads_of_block_values_match_dense_kernel_grads():
    net = _pruned_net()
    sparse = to_block_sparse_nnx(net, block=8, max_density=1.0)
    x = jax.random.normal(jax.random.key(2), (2, 14, 14, 1))

    def loss(model):
        return jnp.sum(model(x) ** 2)

    dense_grads = nnx.grad(loss)(net)
    sparse_grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(sparse)
    np.testing.assert_allclose(
        sparse_grads["layers"][0]["bias"][...], dense_grads["layers"][0]["bias"][...], rtol=1e-4
    )
    kernel = sparse.layers[0].kernel()
    grads = sparse_grads["layers"][0]

    def with_values(blocks, overflow_blocks):
        overflow = dataclasses.replace(kernel.overflow, blocks=overflow_blocks)
        return dataclasses.replace(kernel, blocks=blocks, overflow=overflow)

    as_dense = with_values(grads["blocks"][...], grads["overflow_blocks"][...]).todense()
    kept = with_values(
        jnp.ones_like(kernel.blocks), jnp.ones_like(kernel.overflow.blocks)
    ).todense()
    want = np.where(kept != 0, dense_grads["layers"][0]["kernel"][...], 0.0)
    np.testing.assert_allclose(as_dense, want, rtol=1e-4, atol=1e-5)


def test_errors():
    net = _pruned_net()
    with pytest.raises(LscError, match="impl"):
        to_block_sparse_nnx(net, impl="gpu")
    net.layers[1].kernel[...] = net.layers[1].kernel[...].at[0, 0].set(jnp.nan)
    with pytest.raises(LscError, match="layers/1/kernel"):
        to_block_sparse_nnx(net)
    grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(LscError, match="grouped"):
        to_block_sparse_nnx(grouped, max_density=1.0)

    @nnx.vmap(in_axes=0, out_axes=0)
    def stacked_layers(key):
        return nnx.Linear(8, 8, rngs=nnx.Rngs(key))

    with pytest.raises(LscError, match="shape \\(3, 8, 8\\).*stacked="):
        to_block_sparse_nnx(stacked_layers(jax.random.split(jax.random.key(0), 3)))
    with pytest.raises(LscError, match="a stack of Linear"):
        to_block_sparse_nnx(net, stacked=lambda path, _: path == "layers/0")


def test_max_density_leaves_nearly_dense_layers():
    net = _pruned_net()
    rng = np.random.default_rng(0)
    net.layers[0].kernel[...] = jnp.asarray(random_block_kernel(rng, (294, 40), 4, 0.3))
    net.layers[1].kernel[...] = jnp.ones((40, 10))  # every block non-zero
    sparse = to_block_sparse_nnx(net, block=4, max_density=0.9)
    assert isinstance(sparse.layers[0], BlockSparseLinear)
    assert type(sparse.layers[1]) is nnx.Linear
    x = jax.random.normal(jax.random.key(2), (2, 14, 14, 1))
    np.testing.assert_allclose(sparse(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LscError, match="max_density"):
        to_block_sparse_nnx(net, max_density=-0.1)


class ScanNet(nnx.Module):
    """Three Linear layers made by nnx.vmap (kernel [3, 32, 32]) run by nnx.scan, then a head."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return nnx.Linear(32, 32, rngs=rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def step(x, layer):
            return jnp.tanh(layer(x))

        return self.head(step(x, self.layers))


def test_stacked_layers_under_nnx_scan():
    net = ScanNet(nnx.Rngs(0))
    rng = np.random.default_rng(3)
    layers = np.stack([random_block_kernel(rng, (32, 32), 8, d) for d in (0.2, 0.4, 0.6)])
    net.layers.kernel[...] = jnp.asarray(layers)
    x = jax.random.normal(jax.random.key(4), (4, 32))
    sparse = to_block_sparse_nnx(
        net,
        block=8,
        where=lambda path, _: path == "layers",
        stacked=lambda path, _: True,
        max_density=1.0,
    )
    assert isinstance(sparse.layers, BlockSparseLinear) and type(sparse.head) is nnx.Linear
    assert sparse.layers.counts[...].shape == (3, 4)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sparse, x), net(x), rtol=1e-5, atol=1e-5)
