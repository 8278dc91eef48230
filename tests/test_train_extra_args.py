"""The optax wrappers (keep_masks, gradual, admm, shared_centroids) forward the extra keyword
arguments of ``update`` to their inner transform, as optax.masked does, and keep optax's
conventions: empty trees, the state's structure, `optax.tree_map_params`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import train


def _params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "bias": jnp.zeros(6, jnp.float32),
        }
    }


def _quantized(params):
    return lscjax.quant.kmeans(params, bits=2)


def _wrappers():
    params = _params()
    masks = lscjax.prune.magnitude(params, 0.5)
    return {
        "keep_masks": (lambda inner: train.keep_masks(inner, masks), params),
        "gradual": (lambda inner: train.gradual(inner, train.one_shot(0.5)), params),
        "admm": (lambda inner: train.admm(inner, 0.5, rho=0.1, every=2), params),
        "shared_centroids": (
            lambda inner: train.shared_centroids(inner, _quantized(params)),
            lscjax.quant.dequantize(_quantized(params)),
        ),
    }


def _recording():
    """An inner transform that needs the extra argument `value` and records it (an SGD step)."""
    seen = []

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None, *, value, **extra_args):
        seen.append(value)
        return jax.tree.map(lambda u: -0.1 * u, updates), state

    return optax.GradientTransformationExtraArgs(init, update), seen


@pytest.mark.parametrize("name", sorted(_wrappers()))
def test_extra_args_reach_inner(name):
    wrap, params = _wrappers()[name]
    inner, seen = _recording()
    opt = optax.chain(wrap(inner))
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = opt.update(grads, state, params, value=jnp.float32(3.0), unused=1)
    assert seen and float(seen[-1]) == 3.0
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("name", sorted(_wrappers()))
def test_plain_inner_ignores_extra_args_and_tree_map_params(name):
    """A plain GradientTransformation inner gets no extra argument (with_extra_args_support);
    tree_map_params reaches the params-shaped leaves of the inner state (Adam's moments)."""
    wrap, params = _wrappers()[name]
    opt = wrap(optax.adam(1e-2))
    state = opt.init(params)
    _, state = opt.update(jax.tree.map(jnp.ones_like, params), state, params, value=1.0)
    mapped = optax.tree_map_params(opt, lambda p: jnp.full_like(p, 7.0), state)
    assert jax.tree.structure(mapped) == jax.tree.structure(state)
    adam = [
        s
        for s in jax.tree.leaves(mapped, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    assert adam and all(np.all(np.asarray(m) == 7.0) for m in jax.tree.leaves(adam[0].mu))
    assert int(adam[0].count) == 1  # not a params-shaped leaf: unchanged


def test_keep_masks_empty_tree():
    opt = train.keep_masks(optax.adam(1e-2), {})
    state = opt.init({})
    updates, new_state = opt.update({}, state, {})
    assert updates == {} and jax.tree.structure(new_state) == jax.tree.structure(state)


def test_lbfgs_through_keep_masks_keeps_the_mask():
    """optax.chain(keep_masks(optax.lbfgs(), masks)) runs with lbfgs's value, grad, value_fn,
    lowers the loss, and keeps the pruned weights at exactly 0.0."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)
    masks = lscjax.prune.magnitude(params, 0.5, where=lambda path, _: path == "w")
    params = lscjax.prune.apply(params, masks)

    def loss(p):
        return jnp.mean((x @ p["w"] - y) ** 2)

    opt = optax.chain(train.keep_masks(optax.lbfgs(), masks))
    state = opt.init(params)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(p, s):
        value, grad = value_and_grad(p, state=s)
        updates, s = opt.update(grad, s, p, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(p, updates), s

    start = float(loss(params))
    for _ in range(10):
        params, state = step(params, state)
    m = np.asarray(masks["w"])
    assert np.all(np.asarray(params["w"])[~m] == 0.0)
    assert float(loss(params)) < 0.9 * start
