"""centroid_grads against a hand computation (np.add.at over the codes), per method."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax.quant import QArray, centroid_grads


def test_hand_computed_example_excludes_pruned_code():
    # codebook[0] == 0.0 is the pruned zero: its members' gradients are excluded.
    q = QArray(
        jnp.asarray([[0, 1, 2], [1, 3, 0]], jnp.uint8),
        jnp.asarray([0.0, -0.5, 0.25, 1.0], jnp.float32),
        "kmeans",
        2,
        (2, 3),
    )
    g = jnp.asarray([[10.0, 1.0, 2.0], [3.0, 4.0, 20.0]])
    np.testing.assert_array_equal(np.asarray(centroid_grads(q, g)), [0.0, 4.0, 2.0, 4.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [2, 5, 9])
def test_kmeans_grads_are_member_sums(seed, bits):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(30, 20)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0
    q = lscjax.quant.kmeans({"kernel": w}, bits, iters=5)["kernel"]
    g = rng.normal(size=w.shape).astype(np.float32)
    expected = np.zeros(q.codebook.shape, np.float64)
    np.add.at(expected, np.asarray(q.codes).ravel(), g.ravel())
    expected[0] = 0.0  # pruned positions (code 0 = 0.0) excluded
    got = jax.jit(centroid_grads)(q, jnp.asarray(g))
    assert got.dtype == jnp.float32 and got.shape == q.codebook.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def test_product_grads_are_member_subvector_sums():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(12, 6)).astype(np.float32)
    q = lscjax.quant.product({"kernel": w}, 4, 2, iters=5)["kernel"]
    g = rng.normal(size=w.shape).astype(np.float32)
    codes, expected = np.asarray(q.codes), np.zeros((3, 4, 2))
    for seg in range(3):  # segments: a short loop, rows vectorized by np.add.at
        np.add.at(expected[seg], codes[:, seg], g[:, 2 * seg : 2 * seg + 2])
    np.testing.assert_allclose(np.asarray(centroid_grads(q, g)), expected, rtol=1e-5, atol=1e-6)


def test_residual_and_binarize_grads():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(10, 8)).astype(np.float32)
    g = rng.normal(size=w.shape).astype(np.float32)
    r = lscjax.quant.residual({"kernel": w}, 4, 2, iters=5)["kernel"]
    expected = np.zeros((2, 4))
    for stage in range(2):
        np.add.at(expected[stage], np.asarray(r.codes[stage]).ravel(), g.ravel())
    np.testing.assert_allclose(np.asarray(centroid_grads(r, g)), expected, rtol=1e-5, atol=1e-6)
    v = lscjax.quant.residual({"kernel": w}, 4, 2, iters=5, sub_dim=4)["kernel"]  # vectors
    expected = np.zeros((2, 4, 4))
    for stage in range(2):
        np.add.at(expected[stage], np.asarray(v.codes[stage]).ravel(), g.reshape(-1, 4))
    np.testing.assert_allclose(np.asarray(centroid_grads(v, g)), expected, rtol=1e-5, atol=1e-6)
    b = lscjax.quant.binarize({"kernel": w}, scale="row")["kernel"]
    expected = np.zeros((10, 2))
    rows = np.repeat(np.arange(10), 8)
    np.add.at(expected, (rows, np.asarray(b.codes).ravel()), g.ravel())
    np.testing.assert_allclose(np.asarray(centroid_grads(b, g)), expected, rtol=1e-5, atol=1e-6)


def test_centroid_grads_does_not_retrace():
    w = np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32)
    q = lscjax.quant.kmeans({"kernel": w}, 3, iters=3)["kernel"]
    fn = jax.jit(chex.assert_max_traces(centroid_grads, n=1))
    for seed in range(3):
        fn(q, jnp.asarray(np.random.default_rng(seed).normal(size=w.shape), jnp.float32))


def test_wrong_gradient_shape_raises_naming_the_leaf():
    q = QArray(jnp.zeros((2, 3), jnp.uint8), jnp.zeros((4,), jnp.float32), "kmeans", 2, (2, 3))
    with pytest.raises(LscError, match="Dense_0/kernel"):
        centroid_grads(q, jnp.zeros((3, 2)), path="Dense_0/kernel")
