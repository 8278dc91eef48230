"""admm: the W-step penalty, Z/U updates every `every` steps, hard-pruning masks; on quadratics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import prune, train


def problem(seed=0):
    """Params and the target A of f(W) = 1/2 ||W - A||^2 (gradient W - A)."""
    rng = np.random.default_rng(seed)
    a = {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "bias": jnp.ones(5)}
    p = {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "bias": jnp.zeros(5)}
    return p, a


def make_step(opt, a):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, state):
        grads = jax.tree_util.tree_map(lambda w, t: w - t, p, a)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, updates

    return step


def np_project(w, k):
    flat = w.ravel()
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(w.shape)


@pytest.mark.parametrize("rho", [0.0, 0.5, 2.0])
def test_first_update_by_hand(rho):
    chex.clear_trace_counter()
    p, a = problem()
    opt = train.admm(optax.sgd(0.1), 0.6, rho=rho, every=3)
    state = opt.init(p)
    w0 = np.asarray(p["kernel"])
    z0 = np_project(w0, 12)  # round(30 * 0.4)
    np.testing.assert_array_equal(state.z["kernel"], z0)
    assert state.z["bias"] is None and state.u["bias"] is None
    _, _, updates = make_step(opt, a)(p, state)
    want = -0.1 * ((w0 - np.asarray(a["kernel"])) + rho * (w0 - z0))
    np.testing.assert_allclose(updates["kernel"], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(updates["bias"], -0.1 * (0.0 - 1.0) * np.ones(5), rtol=1e-6)


@pytest.mark.parametrize("every", [1, 3])
def test_z_and_u_updates_every_steps(every):
    chex.clear_trace_counter()
    p, a = problem(1)
    opt = train.admm(optax.sgd(0.2), {"kernel": 0.8}, rho=lambda c: 0.1 * (1 + c), every=every)
    state, step = opt.init(p), make_step(opt, a)
    for t in range(1, 10):
        z_old, u_old = np.asarray(state.z["kernel"]), np.asarray(state.u["kernel"])
        p, state, _ = step(p, state)
        assert int(state.count) == t
        w = np.asarray(p["kernel"])
        if t % every == 0:
            z = np_project(w + u_old, 6)
            np.testing.assert_allclose(state.z["kernel"], z, rtol=1e-6)
            np.testing.assert_allclose(state.u["kernel"], u_old + w - z, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(state.z["kernel"], z_old)
            np.testing.assert_array_equal(state.u["kernel"], u_old)


@pytest.mark.slow
def test_converges_to_the_constrained_optimum():
    # min 1/2 ||W - A||^2 s.t. card(W) <= k is solved by the k largest entries of A
    chex.clear_trace_counter()
    p, a = problem(2)
    opt = train.admm(optax.sgd(0.1), {"kernel": 0.7}, rho=1.0, every=10)
    state, step = opt.init(p), make_step(opt, a)
    for _ in range(400):
        p, state, _ = step(p, state)
    masks = train.admm_masks(state)
    assert masks["bias"] is None
    np.testing.assert_array_equal(masks["kernel"], np_project(np.asarray(a["kernel"]), 9) != 0)
    np.testing.assert_allclose(p["kernel"], state.z["kernel"], atol=1e-2)
    # hard pruning + masked retraining reaches the constrained optimum exactly
    pruned = prune.apply(p, masks)
    retrain = train.keep_masks(optax.sgd(0.5), masks)
    chex.clear_trace_counter()  # a second step function, traced once itself
    rstate, rstep = retrain.init(pruned), make_step(retrain, a)
    for _ in range(60):
        pruned, rstate, _ = rstep(pruned, rstate)
    np.testing.assert_allclose(
        pruned["kernel"], np_project(np.asarray(a["kernel"]), 9), rtol=1e-5, atol=1e-6
    )


def test_errors():
    p, _ = problem()
    with pytest.raises(lscjax.LscError, match="every"):
        train.admm(optax.sgd(0.1), 0.5, rho=1.0, every=0)
    with pytest.raises(lscjax.LscError, match="missing"):
        train.admm(optax.sgd(0.1), {"other": 0.5}, rho=1.0, every=2).init(p)
    opt = train.admm(optax.sgd(0.1), 0.5, rho=1.0, every=2)
    with pytest.raises(lscjax.LscError, match="params"):
        opt.update(p, opt.init(p))
