"""lscjax.train.shared_centroids: centroid fine-tuning with fixed codes and exactly-zero pruned weights."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import LscError


def pruned_params(seed=0, density=0.3):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=(24, 16)).astype(np.float32)
    w0[rng.random(w0.shape) >= density] = 0.0
    w1 = rng.normal(size=(16, 4)).astype(np.float32)
    return {
        "Dense_0": {"kernel": jnp.asarray(w0), "bias": jnp.zeros(16)},
        "Dense_1": {"kernel": jnp.asarray(w1), "bias": jnp.zeros(4)},
    }


BITS = {"Dense_0/kernel": 3, "Dense_1/kernel": 2}


def test_one_sgd_step_moves_centroids_by_summed_member_grads():
    params = pruned_params()
    q = lscjax.quant.kmeans(params, BITS)
    dense = lscjax.quant.dequantize(q)
    rng = np.random.default_rng(1)
    grads = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), dense
    )
    lr = 0.1
    opt = lscjax.train.shared_centroids(optax.sgd(lr), q)
    state = opt.init(dense)
    updates, state = jax.jit(opt.update)(grads, state, dense)
    new = optax.apply_updates(dense, updates)
    for name in ("Dense_0", "Dense_1"):
        qa, g = q[name]["kernel"], np.asarray(grads[name]["kernel"])
        codes = np.asarray(qa.codes)
        hand = np.zeros(qa.codebook.shape)
        np.add.at(hand, codes.ravel(), g.ravel())
        expected = np.asarray(qa.codebook) - lr * hand
        if name == "Dense_0":  # pruned layer: the zero code stays exactly 0.0
            expected[0] = 0.0
        np.testing.assert_allclose(
            np.asarray(state.quantized[name]["kernel"].codebook), expected, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(new[name]["kernel"]), expected[codes], rtol=1e-5, atol=1e-6
        )
        # biases are not quantized: plain SGD
        np.testing.assert_allclose(
            np.asarray(new[name]["bias"]), -lr * np.asarray(grads[name]["bias"]), rtol=1e-6
        )
    assert state.quantized[name]["bias"] is None


@pytest.mark.parametrize(
    "inner", [optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1), optax.sgd(0.05, momentum=0.9)]
)
def test_training_keeps_codes_zeros_and_shared_values(inner):
    chex.clear_trace_counter()  # `step` below is redefined per parametrization
    params = pruned_params(2)
    q = lscjax.quant.kmeans(params, BITS)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(64, 24)), jnp.float32)
    y = jnp.asarray(np.random.default_rng(4).integers(0, 4, size=64))

    def loss(p):
        h = jax.nn.relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
        logits = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    opt = lscjax.train.shared_centroids(inner, q)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    dense = lscjax.quant.dequantize(q)
    state = opt.init(dense)
    start = float(loss(dense))
    for _ in range(30):
        dense, state = step(dense, state)
    assert float(loss(dense)) < start
    trained = lscjax.train.quantized_params(dense, state)
    zero = np.asarray(params["Dense_0"]["kernel"]) == 0
    for name in ("Dense_0", "Dense_1"):
        w = np.asarray(dense[name]["kernel"])
        qa = trained[name]["kernel"]
        np.testing.assert_array_equal(np.asarray(qa.codes), np.asarray(q[name]["kernel"].codes))
        np.testing.assert_allclose(np.asarray(qa.dequantize()), w, rtol=1e-6, atol=1e-7)
        assert np.unique(w).size <= 2 ** BITS[f"{name}/kernel"]
        assert not np.allclose(np.asarray(qa.codebook), np.asarray(q[name]["kernel"].codebook))
    np.testing.assert_array_equal(np.asarray(dense["Dense_0"]["kernel"])[zero], 0.0)
    assert float(trained["Dense_0"]["kernel"].codebook[0]) == 0.0


def test_init_does_not_alias_the_given_qarrays():
    params = pruned_params(5)
    q = lscjax.quant.kmeans(params, BITS)
    state = lscjax.train.shared_centroids(optax.sgd(0.1), q).init(lscjax.quant.dequantize(q))
    jax.tree_util.tree_map(lambda a: a.delete(), state.quantized)
    np.testing.assert_array_equal(np.asarray(q["Dense_0"]["kernel"].codebook).shape, (8,))


def test_qarray_of_the_wrong_shape_raises_naming_the_leaf():
    params = pruned_params(6)
    q = lscjax.quant.kmeans(params, BITS)
    other = dict(params, Dense_1={"kernel": jnp.zeros((16, 5)), "bias": jnp.zeros(5)})
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        lscjax.train.shared_centroids(optax.sgd(0.1), q).init(other)


def test_update_without_params_raises():
    q = lscjax.quant.kmeans(pruned_params(7), BITS)
    dense = lscjax.quant.dequantize(q)
    opt = lscjax.train.shared_centroids(optax.sgd(0.1), q)
    with pytest.raises(LscError, match="params"):
        opt.update(dense, opt.init(dense))


def test_single_argument_form_inits_from_the_qarray_tree():
    rng = np.random.default_rng(3)
    params = {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(12, 6)), jnp.float32),
            "bias": jnp.zeros(6),
        }
    }
    q = lscjax.quant.kmeans(lscjax.prune.apply(params, lscjax.prune.magnitude(params, 0.5)), 3)
    dense = lscjax.quant.dequantize(q)
    grads = jax.tree_util.tree_map(
        lambda w: jnp.asarray(rng.normal(size=w.shape), jnp.float32), dense
    )
    two = lscjax.train.shared_centroids(optax.sgd(0.1), q)
    one = lscjax.train.shared_centroids(optax.sgd(0.1))
    u2, s2 = two.update(grads, two.init(dense), dense)
    u1, s1 = one.update(grads, one.init(q), dense)
    chex.assert_trees_all_equal(u1, u2)
    chex.assert_trees_all_equal(s1.quantized, s2.quantized)
    with pytest.raises(lscjax.LscError, match="no QArray"):
        one.init(dense)
