"""keep_masks: pruned weights stay exactly 0.0 through any inner optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax


def loss_fn(params, x, y):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return jnp.mean((h @ params["Dense_1"]["kernel"] - y) ** 2)


@pytest.mark.parametrize(
    "inner",
    [
        optax.adamw(1e-2, weight_decay=1e-2),
        optax.sgd(1e-2, momentum=0.9),
        optax.chain(optax.add_decayed_weights(1e-3), optax.lamb(1e-2)),
    ],
    ids=["adamw", "sgd-momentum", "lamb+decay"],
)
def test_pruned_stay_zero_kept_train_for_100_steps(inner):
    rng = np.random.default_rng(0)
    params = {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(16, 32)), jnp.float32),
            "bias": jnp.zeros(32),
        },
        "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)},
    }
    x = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    masks = lscjax.prune.magnitude(params, 0.9)
    params = lscjax.prune.apply(params, masks)
    start = params
    grads0 = jax.grad(loss_fn)(params, x, y)
    opt = lscjax.train.keep_masks(inner, masks)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(loss_fn)(p, x, y), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(100):
        params, state = step(params, state)
    for name in ("Dense_0", "Dense_1"):
        m = np.asarray(masks[name]["kernel"])
        w = np.asarray(params[name]["kernel"])
        assert np.all(w[~m] == 0.0) and not np.any(np.signbit(w[~m]))
        moved = w != np.asarray(start[name]["kernel"])
        # every kept weight with a gradient trains (hidden units whose outgoing weights were all
        # pruned get exactly zero gradient)
        assert np.all(moved[m & (np.asarray(grads0[name]["kernel"]) != 0)])
    # a leaf with no mask (the bias) trains normally
    assert not np.allclose(params["Dense_0"]["bias"], 0.0)
    assert float(loss_fn(params, x, y)) < float(loss_fn(start, x, y))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_pruned_weights_stay_exactly_zero(dtype):
    """keep_masks on bf16 / f16 params: adamw's weight decay and moments never move a pruned
    weight off 0.0, and the kept ones train."""
    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), dtype)
    params = {"kernel": w}
    masks = lscjax.prune.magnitude(params, 0.75)
    params = lscjax.prune.apply(params, masks)
    opt = lscjax.train.keep_masks(optax.adamw(1e-2, weight_decay=1e-2), masks)
    state = opt.init(params)
    x = jnp.ones((4, 16), dtype)

    def loss(p):
        return jnp.sum((x @ p["kernel"]).astype(jnp.float32) ** 2)

    start = params["kernel"]
    for _ in range(5):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    got = np.asarray(params["kernel"], np.float32)
    assert params["kernel"].dtype == dtype
    assert (got[~np.asarray(masks["kernel"])] == 0.0).all()
    assert (got != np.asarray(start, np.float32))[np.asarray(masks["kernel"])].all()
