"""gradual: Zhu & Gupta schedules, masks against a magnitude oracle, resume from a checkpoint."""

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import prune, train


def params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "bias": jnp.ones(6),
        },
        "Dense_1": {
            "kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "bias": jnp.ones(4),
        },
    }


def gradients(step, like):
    rng = np.random.default_rng(1000 + step)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), like)


def make_step(opt):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, state, g):
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    return step


def run(step, p, state, start, stop):
    for t in range(start, stop):
        p, state = step(p, state, gradients(t, p))
    return p, state


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),
        (10, 0.1),
        (20, 0.8 + (0.1 - 0.8) * 0.75**3),
        (30, 0.8 - 0.7 * 0.125),
        (50, 0.8),
        (90, 0.8),
    ],
)
def test_polynomial_schedule_formula(step, expected):
    sched = train.polynomial(0.1, 0.8, begin=10, end=50, frequency=10)
    assert float(sched(jnp.int32(step))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("begin", "end", "frequency", "updates"),
    [(10, 50, 10, {10, 20, 30, 40, 50}), (0, 25, 10, {0, 10, 20, 25}), (7, 7, 1, {7})],
)
def test_update_steps(begin, end, frequency, updates):
    sched = train.polynomial(0.0, 0.5, begin=begin, end=end, frequency=frequency)
    got = {t for t in range(80) if bool(sched.is_update(jnp.int32(t)))}
    assert got == updates


@pytest.mark.parametrize("distribution", ["uniform", "global", "erk", "map"])
def test_masks_follow_the_schedule_and_magnitude(distribution):
    chex.clear_trace_counter()
    p0 = params()
    sched = train.polynomial(0.0, 0.75, begin=2, end=14, frequency=3)
    targets = {"Dense_0/kernel": 0.9, "Dense_1/kernel": 0.5}
    dist = targets if distribution == "map" else distribution
    opt = train.gradual(optax.sgd(0.05), sched, distribution=dist)
    state, step = opt.init(p0), make_step(opt)
    record, masks_seen = [], []
    p = p0
    for t in range(20):
        record.append(p)
        p, state = run(step, p, state, t, t + 1)
        masks_seen.append(state.masks)
    finals = (
        targets
        if distribution == "map"
        else prune.layer_sparsities(p0, 0.75, "erk" if distribution == "erk" else "uniform")
    )
    for t in range(20):
        masks = masks_seen[t]
        assert masks["Dense_0"]["bias"] is None
        if t < 2:
            assert all(bool(masks[k]["kernel"].all()) for k in p0)
            continue
        last = 2 + 3 * min((t - 2) // 3, 4)  # the update step in force
        s = 0.75 + (0.0 - 0.75) * (1 - (last - 2) / 12) ** 3
        if distribution == "global":
            want = prune.magnitude(record[last], s, scope="global")
        else:
            want = prune.distributed_magnitude(
                record[last], {k: finals[k] * s / 0.75 for k in finals}
            )
        for k in p0:
            got_k, want_k = np.asarray(masks[k]["kernel"]), np.asarray(want[k]["kernel"])
            if distribution in ("uniform", "global"):
                np.testing.assert_array_equal(got_k, want_k)
            else:  # per-layer targets s * final_l / final: float32 rounding may move one weight
                assert abs(int(got_k.sum()) - int(want_k.sum())) <= 1
                w = np.abs(np.asarray(record[last][k]["kernel"]))
                if got_k.any() and not got_k.all():
                    assert w[got_k].min() >= w[~got_k].max()
            # pruned weights are exactly zero after the step, and stay pruned
            if t + 1 < 20:
                assert not np.any(np.asarray(record[t + 1][k]["kernel"])[~got_k])
            if t > 0:
                assert not np.any(
                    ~np.asarray(masks_seen[t - 1][k]["kernel"]) & np.asarray(masks[k]["kernel"])
                )
    if distribution in ("uniform", "map"):
        for k in p0:
            m = np.asarray(masks_seen[-1][k]["kernel"])
            assert m.sum() == round(m.size * (1 - finals[f"{k}/kernel"]))
            assert np.count_nonzero(np.asarray(p[k]["kernel"])) <= m.sum()


def test_resume_from_saved_state_gives_identical_masks():
    chex.clear_trace_counter()
    p0 = params(1)
    opt = train.gradual(optax.adam(0.05), train.polynomial(0.0, 0.9, begin=0, end=30, frequency=4))
    step = make_step(opt)
    straight_p, straight_state = run(step, p0, opt.init(p0), 0, 40)
    p, state = run(step, p0, opt.init(p0), 0, 13)
    saved = flax.serialization.to_bytes((p, state))  # msgpack, no pickle
    p, state = flax.serialization.from_bytes((p0, opt.init(p0)), saved)
    assert int(state.count) == 13
    p, state = run(step, p, state, 13, 40)  # the restored state reuses the compiled step
    for k in p0:
        np.testing.assert_array_equal(state.masks[k]["kernel"], straight_state.masks[k]["kernel"])
        np.testing.assert_array_equal(p[k]["kernel"], straight_p[k]["kernel"])
    assert prune.sparsity(state.masks) == pytest.approx(
        {"Dense_0/kernel": 0.9, "Dense_1/kernel": 0.9}, abs=0.03
    )


def test_one_shot():
    chex.clear_trace_counter()
    p0 = params(2)
    opt = train.gradual(optax.sgd(0.01), train.one_shot(0.5, step=3))
    state, p, step = opt.init(p0), p0, make_step(opt)
    for t in range(8):
        before = p
        p, state = run(step, p, state, t, t + 1)
        kept = int(state.masks["Dense_0"]["kernel"].sum())
        assert kept == (48 if t < 3 else 24)
        if t == 3:
            want = prune.magnitude(before, 0.5)
            np.testing.assert_array_equal(
                state.masks["Dense_0"]["kernel"], want["Dense_0"]["kernel"]
            )


def test_errors():
    with pytest.raises(lscjax.LscError):
        train.polynomial(0.0, 1.0, 0, 10, 1)
    with pytest.raises(lscjax.LscError):
        train.polynomial(0.0, 0.5, 10, 5, 1)
    with pytest.raises(lscjax.LscError):
        train.polynomial(0.0, 0.5, 0, 10, 0)
    with pytest.raises(lscjax.LscError, match="distribution"):
        train.gradual(optax.sgd(0.1), train.one_shot(0.5), distribution="normal")
    opt = train.gradual(optax.sgd(0.1), train.one_shot(0.5))
    p = params()
    with pytest.raises(lscjax.LscError, match="params"):
        opt.update(p, opt.init(p))
