"""lscjax.flax (Linen): to_block_sparse + compressed_apply equal dense apply on the decoded weights."""

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax._src.sparse.random import random_block_kernel
from lscjax.flax import compressed_apply, to_block_sparse, to_dense
from lscjax.models import LeNet5, LeNet300
from lscjax.quant import QArray
from lscjax.sparse import BlockSparse


def _pruned(model, x, quality=1.5):
    params = model.init(jax.random.key(0), x)["params"]
    return lscjax.prune.apply(params, lscjax.prune.std_threshold(params, quality))


@pytest.fixture(scope="module")
def lenet5():
    """LeNet-5, its pruned params and their BlockSparse form (block 16), built once."""
    model = LeNet5()
    params = _pruned(model, jnp.zeros((1, 28, 28, 1)))
    return model, params, to_block_sparse(params, block=16, max_density=1.0)


class StridedNet(nn.Module):
    """Convs with SAME / explicit padding and strides, a bf16 Dense, a Dense without bias."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2, padding="SAME")(x))
        x = nn.relu(nn.Conv(5, (2, 3), strides=(1, 2), padding=((1, 0), (2, 1)))(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(24, dtype=jnp.bfloat16)(x)
        return nn.Dense(10, use_bias=False)(x.astype(jnp.float32))


@pytest.mark.parametrize(
    "model, block",
    [(LeNet300(), (8, 32)), (StridedNet(), 4)],
)
def test_compressed_apply_equals_dense_apply(model, block):
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    params = _pruned(model, x)
    sparse = to_block_sparse(params, block=block, max_density=1.0)
    assert all(isinstance(sparse[layer]["kernel"], BlockSparse) for layer in sparse)
    decoded = to_dense(sparse)
    chex.assert_trees_all_equal(decoded, params)
    got = jax.jit(compressed_apply(model.apply))({"params": sparse}, x)
    want = model.apply({"params": decoded}, x)
    assert got.dtype == want.dtype
    tol = 2e-2 if isinstance(model, StridedNet) else 1e-5  # bf16 Dense: output rounding
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_lenet5_interceptor_runs_inside_jit_without_retrace(lenet5):
    model, params, sparse = lenet5
    chex.assert_trees_all_equal(to_dense(sparse), params)
    sparse = {"params": sparse}
    x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
    with pytest.raises(flax.errors.ScopeParamShapeError):  # no interceptor: Flax rejects it
        jax.jit(model.apply)(sparse, x)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def predict(variables, x):
        return compressed_apply(model.apply)(variables, x)

    for step in range(3):  # cache hits still run the block-sparse layers
        xs = x + step
        np.testing.assert_allclose(
            predict(sparse, xs), model.apply({"params": params}, xs), rtol=1e-5, atol=1e-5
        )


def test_where_and_qarray_leaves():
    model = LeNet300()
    x = jax.random.uniform(jax.random.key(3), (2, 28, 28, 1))
    params = _pruned(model, x)
    rng = np.random.default_rng(0)
    codebook = np.concatenate([[0.0], rng.standard_normal(15) * 0.1]).astype(np.float32)
    codes = rng.integers(1, 16, (300, 100)) * (rng.random((300, 100)) < 0.1)
    qarray = QArray(jnp.asarray(codes, jnp.uint8), jnp.asarray(codebook), "kmeans", 4, (300, 100))
    params = {**params, "Dense_1": {**params["Dense_1"], "kernel": qarray}}
    sparse = to_block_sparse(
        params,
        block=(10, 20),
        where=lambda path, _: path in ("Dense_0/kernel", "Dense_1/kernel"),
        max_density=1.0,
    )
    assert sparse["Dense_1"]["kernel"].bits == 4
    assert not isinstance(sparse["Dense_2"]["kernel"], BlockSparse)
    decoded = {**params, "Dense_1": {**params["Dense_1"], "kernel": qarray.dequantize()}}
    got = jax.jit(compressed_apply(model.apply))({"params": sparse}, x)
    np.testing.assert_allclose(got, model.apply({"params": decoded}, x), rtol=1e-5, atol=1e-5)


def test_grad_through_compressed_model_matches_dense():
    model = LeNet300()
    x = jax.random.uniform(jax.random.key(4), (2, 28, 28, 1))
    params = _pruned(model, x)
    sparse = to_block_sparse(params, block=(16, 20), max_density=1.0)
    apply = compressed_apply(model.apply)
    got = jax.grad(lambda x: jnp.sum(apply({"params": sparse}, x) ** 2))(x)
    want = jax.grad(lambda x: jnp.sum(model.apply({"params": params}, x) ** 2))(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class TransposeNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.ConvTranspose(4, (3,))(x)


def test_errors_name_the_path():
    x = jnp.ones((2, 5, 8))
    params = TransposeNet().init(jax.random.key(0), x)["params"]
    sparse = to_block_sparse(params, block=4, max_density=1.0)
    with pytest.raises(LscError, match="ConvTranspose_0.*ConvTranspose, which is not served"):
        compressed_apply(TransposeNet().apply)({"params": sparse}, x)
    with pytest.raises(LscError, match="Dense_0/kernel"):
        to_block_sparse({"Dense_0": {"kernel": jnp.ones((4, 4), jnp.int32)}})
    with pytest.raises(LscError, match="Dense_0/kernel.*NaN"):
        to_block_sparse({"Dense_0": {"kernel": jnp.full((4, 4), jnp.nan)}})
    with pytest.raises(LscError, match="impl"):
        compressed_apply(TransposeNet().apply, impl="gpu")


def test_max_density_keeps_nearly_dense_kernels():
    """Kernels above `max_density` (fraction of non-zero blocks, counted by hand) are served
    dense (a QArray dequantized once); the rest become BlockSparse; the mix serves like dense
    apply."""
    model = LeNet300()
    x = jax.random.uniform(jax.random.key(5), (2, 28, 28, 1))
    params = model.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(1)
    sparse_kernel = random_block_kernel(rng, (784, 300), 16, 0.2)
    codebook = np.concatenate([[0.0], rng.standard_normal(15) * 0.1]).astype(np.float32)
    dense_codes = QArray(
        jnp.asarray(rng.integers(1, 16, (300, 100)), jnp.uint8),
        jnp.asarray(codebook),
        "kmeans",
        4,
        (300, 100),
    )  # every block non-zero
    params = {
        **params,
        "Dense_0": {**params["Dense_0"], "kernel": jnp.asarray(sparse_kernel)},
        "Dense_1": {**params["Dense_1"], "kernel": dense_codes},
    }
    blocks = np.abs(np.pad(sparse_kernel, ((0, 0), (0, 4)))).reshape(49, 16, 19, 16).sum((1, 3))
    density = np.count_nonzero(blocks) / blocks.size
    assert 0.15 < density < 0.25
    sparse = to_block_sparse(params, block=16, max_density=0.5)
    assert sparse["Dense_0"]["kernel"].block_density == pytest.approx(density)
    # 100% of the blocks: dequantized once
    np.testing.assert_array_equal(sparse["Dense_1"]["kernel"], dense_codes.dequantize())
    np.testing.assert_array_equal(sparse["Dense_2"]["kernel"], params["Dense_2"]["kernel"])
    everything = to_block_sparse(params, block=16, max_density=1.0)  # every kernel
    assert all(isinstance(everything[f"Dense_{i}"]["kernel"], BlockSparse) for i in range(3))
    decoded = {**params, "Dense_1": {**params["Dense_1"], "kernel": dense_codes.dequantize()}}
    got = jax.jit(compressed_apply(model.apply))({"params": sparse}, x)
    np.testing.assert_allclose(got, model.apply({"params": decoded}, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LscError, match="max_density"):
        to_block_sparse(params, max_density=1.5)


class Layer(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(32)(x)), None


class ScannedNet(nn.Module):
    """Three Dense layers under nn.scan (kernels stacked [3, 32, 32]), then a Dense head."""

    @nn.compact
    def __call__(self, x):
        layers = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        x, _ = layers()(x, None)
        return nn.Dense(10)(x)


@pytest.mark.parametrize("quantized", [False, True])
def test_scanned_layers_stacked(quantized):
    """`stacked=` converts each layer of an nn.scan kernel and stacks them; the scan slices the
    stacked BlockSparse back per layer, and the model equals dense apply."""
    model = ScannedNet()
    x = jax.random.normal(jax.random.key(6), (4, 32))
    params = model.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(2)
    layers = np.stack([random_block_kernel(rng, (32, 32), 8, d) for d in (0.2, 0.4, 0.6)])
    params["ScanLayer_0"]["Dense_0"]["kernel"] = jnp.asarray(layers)
    if quantized:
        params = lscjax.quant.kmeans(
            params, 4, where=lambda p, _: p == "ScanLayer_0/Dense_0/kernel"
        )
    scanned = lambda path, _: path.startswith("ScanLayer_0/")  # noqa: E731
    sparse = to_block_sparse(params, block=8, stacked=scanned, max_density=1.0)
    kernel = sparse["ScanLayer_0"]["Dense_0"]["kernel"]
    assert isinstance(kernel, BlockSparse) and kernel.counts.shape == (3, 4)
    assert kernel.bits == (4 if quantized else None)
    decoded = lscjax.quant.dequantize(params)
    want = model.apply({"params": decoded}, x)
    got = jax.jit(compressed_apply(model.apply))({"params": sparse}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    dense_stack = to_block_sparse(params, block=8, stacked=scanned, max_density=0.3)
    # the stack keeps 40% of its blocks: over max_density, it is served dense
    np.testing.assert_array_equal(
        dense_stack["ScanLayer_0"]["Dense_0"]["kernel"],
        decoded["ScanLayer_0"]["Dense_0"]["kernel"],
    )


def test_scanned_layers_from_a_file(tmp_path):
    """An .lsc file of a scanned model loads with `stacked=` as per-layer BlockSparse stacks
    and serves like the dense params loaded from the same file."""
    model = ScannedNet()
    x = jax.random.normal(jax.random.key(7), (4, 32))
    params = model.init(jax.random.key(0), x)["params"]
    compressed = lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.9))
    lscjax.save(tmp_path / "scan.lsc", compressed)
    scanned = lambda path, _: path.startswith("ScanLayer_0/")  # noqa: E731
    served = lscjax.load(
        tmp_path / "scan.lsc", layout="block_sparse", block=8, stacked=scanned, max_density=1.0
    )
    kernel = served["ScanLayer_0"]["Dense_0"]["kernel"]
    assert isinstance(kernel, BlockSparse) and kernel.shape == (32, 32)
    assert kernel.counts.shape == (3, 4)
    dense = lscjax.load(tmp_path / "scan.lsc")
    got = jax.jit(compressed_apply(model.apply))({"params": served}, x)
    np.testing.assert_allclose(got, model.apply({"params": dense}, x), rtol=1e-5, atol=1e-5)
