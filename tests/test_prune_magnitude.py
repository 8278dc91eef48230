"""Magnitude pruning, std threshold, apply and sparsity against NumPy oracles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lscjax
from lscjax import LscError


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Conv_0": {
            "kernel": jnp.asarray(rng.normal(size=(5, 5, 1, 20)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=20), jnp.float32),
        },
        "Dense_0": {
            "kernel": jnp.asarray(rng.normal(size=(80, 50)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=50), jnp.float32),
        },
        "Dense_1": {
            "kernel": jnp.asarray(rng.normal(size=(50, 10)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=10), jnp.float32),
        },
    }


KERNELS = ["Conv_0", "Dense_0", "Dense_1"]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.987, 0.999])
def test_layer_scope_keeps_exact_count_of_largest(sparsity):
    params = make_params()
    masks = lscjax.prune.magnitude(params, sparsity)
    for name in KERNELS:
        w = np.asarray(params[name]["kernel"])
        m = np.asarray(masks[name]["kernel"])
        assert m.dtype == bool and m.shape == w.shape
        assert m.sum() == round(w.size * (1 - sparsity))
        if 0 < m.sum() < m.size:  # every kept magnitude >= every pruned one
            assert np.abs(w[m]).min() >= np.abs(w[~m]).max()
        assert masks[name]["bias"] is None


@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.99])
def test_global_scope_keeps_exact_count_over_all_layers(sparsity):
    params = make_params(1)
    masks = lscjax.prune.magnitude(params, sparsity, scope="global")
    w = np.concatenate([np.abs(np.asarray(params[n]["kernel"])).ravel() for n in KERNELS])
    m = np.concatenate([np.asarray(masks[n]["kernel"]).ravel() for n in KERNELS])
    assert m.sum() == round(w.size * (1 - sparsity))
    assert w[m].min() >= w[~m].max()
    # the per-layer densities differ from uniform when layers have different scales
    threshold = np.sort(w)[::-1][m.sum() - 1]
    for n in KERNELS:
        expect = np.abs(np.asarray(params[n]["kernel"])) >= threshold
        np.testing.assert_array_equal(np.asarray(masks[n]["kernel"]), expect)


@given(
    st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.0]), min_size=1, max_size=30), st.floats(0.0, 0.99)
)
def test_ties_broken_deterministically_by_lower_index(values, sparsity):
    w = jnp.asarray(values, jnp.float32).reshape(1, -1)
    m = np.asarray(lscjax.prune.magnitude({"kernel": w}, sparsity)["kernel"]).ravel()
    k = round(w.size * (1 - sparsity))
    oracle_order = sorted(range(w.size), key=lambda i: (-abs(values[i]), i))
    expect = np.zeros(w.size, bool)
    expect[oracle_order[:k]] = True
    np.testing.assert_array_equal(m, expect)


def test_where_callable_and_pytree_honoured():
    params = make_params()
    only_dense0 = lambda path, leaf: path == "Dense_0/kernel"  # noqa: E731
    masks = lscjax.prune.magnitude(params, 0.5, where=only_dense0)
    assert masks["Conv_0"]["kernel"] is None and masks["Dense_1"]["kernel"] is None
    assert masks["Dense_0"]["kernel"].sum() == 2000
    where = jax.tree_util.tree_map(lambda _: False, params)
    where["Dense_1"]["bias"] = True  # a pytree may select a bias explicitly
    masks = lscjax.prune.magnitude(params, 0.5, where=where)
    assert masks["Dense_1"]["bias"].sum() == 5 and masks["Dense_0"]["kernel"] is None


def test_apply_zeroes_pruned_and_leaves_biases_untouched():
    params = make_params()
    masks = lscjax.prune.magnitude(params, 0.8)
    pruned = lscjax.prune.apply(params, masks)
    for name in KERNELS:
        w, m = np.asarray(params[name]["kernel"]), np.asarray(masks[name]["kernel"])
        np.testing.assert_array_equal(np.asarray(pruned[name]["kernel"]), np.where(m, w, 0.0))
        np.testing.assert_array_equal(pruned[name]["bias"], params[name]["bias"])
    density = {p: 1 - s for p, s in lscjax.prune.sparsity(pruned).items()}
    assert density == pytest.approx({f"{n}/kernel": 0.2 for n in KERNELS}, abs=1e-3)
    assert lscjax.prune.sparsity(masks) == lscjax.prune.sparsity(pruned)


def test_std_threshold_matches_numpy():
    params = make_params(2)
    masks = lscjax.prune.std_threshold(params, 1.5)
    for name in KERNELS:
        w = np.asarray(params[name]["kernel"])
        np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]), np.abs(w) > 1.5 * w.std())


def test_magnitude_under_jit_without_retracing():
    params = make_params()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def prune(p):
        return lscjax.prune.apply(p, lscjax.prune.magnitude(p, 0.75))

    out = prune(params)
    prune(make_params(5))
    eager = lscjax.prune.apply(params, lscjax.prune.magnitude(params, 0.75))
    chex.assert_trees_all_equal(out, eager)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_range_rejected(bad):
    with pytest.raises(ValueError, match="sparsity"):
        lscjax.prune.magnitude(make_params(), bad)


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_non_finite_leaf_rejected_with_path(poison):
    params = make_params()
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[3, 4].set(poison)
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        lscjax.prune.magnitude(params, 0.5)
    with pytest.raises(LscError, match="Dense_1/kernel"):
        lscjax.prune.std_threshold(params, 1.0)


def test_non_float_leaf_rejected_with_path():
    params = make_params()
    params["Dense_0"]["kernel"] = jnp.ones((4, 4), jnp.int32)
    with pytest.raises(ValueError, match="Dense_0/kernel.*floating"):
        lscjax.prune.magnitude(params, 0.5)


def test_mask_shape_mismatch_rejected_with_path():
    params = make_params()
    masks = lscjax.prune.magnitude(params, 0.5)
    masks["Dense_1"]["kernel"] = masks["Dense_1"]["kernel"][:, :5]
    with pytest.raises(LscError, match="Dense_1/kernel"):
        lscjax.prune.apply(params, masks)


def test_unknown_scope_rejected():
    with pytest.raises(LscError, match="scope"):
        lscjax.prune.magnitude(make_params(), 0.5, scope="model")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_low_precision_ties_keep_exactly_k(dtype, scope):
    """bf16 has 8 bits of mantissa: many weights round to the same magnitude. The masks still
    keep exactly round(n * (1 - s)) weights, every kept |w| >= every pruned |w|."""
    rng = np.random.default_rng(0)
    params = {
        "a": {"kernel": jnp.asarray(rng.integers(-8, 9, (24, 10)) / 8, dtype)},  # 17 values
        "b": {"kernel": jnp.asarray(rng.integers(-3, 4, (3, 3, 2, 5)) / 4, dtype)},
    }
    masks = lscjax.prune.magnitude(params, 0.7, scope=scope)
    kept = {k: np.asarray(masks[k]["kernel"]) for k in params}
    w = {k: np.abs(np.asarray(params[k]["kernel"], np.float32)) for k in params}
    if scope == "layer":
        for k in params:
            assert kept[k].sum() == round(w[k].size * 0.3)
            assert w[k][kept[k]].min() >= w[k][~kept[k]].max()
    else:
        total = sum(v.size for v in w.values())
        assert sum(m.sum() for m in kept.values()) == round(total * 0.3)
        kept_min = min(w[k][kept[k]].min() for k in params if kept[k].any())
        assert kept_min >= max(w[k][~kept[k]].max() for k in params)
    pruned = lscjax.prune.apply(params, masks)
    assert all(pruned[k]["kernel"].dtype == dtype for k in params)
