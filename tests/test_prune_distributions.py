"""Sparsity distributions: uniform, ERK (hand-computed cases), {path: sparsity} maps, global."""

import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax.prune import distributed_magnitude, erk_sparsities, layer_sparsities, magnitude


def params():
    rng = np.random.default_rng(0)
    return {
        "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 8)), jnp.float32)},
        "Dense_0": {"kernel": jnp.asarray(rng.normal(size=(72, 30)), jnp.float32)},
        "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(30, 10)), jnp.float32)},
    }


@pytest.mark.parametrize(
    ("sparsity", "expected"),
    [
        # raw a = 20/100, b = 200/10^4; keep 1010 = eps (20 + 200): eps = 4.5909...
        (0.9, {"a": 1 - 0.2 * 1010 / 220, "b": 1 - 0.02 * 1010 / 220}),
        # keep 5050: a would exceed density 1, so a is dense and b keeps 4950 of 10^4
        (0.5, {"a": 0.0, "b": 1 - 4950 / 10_000}),
    ],
)
def test_erk_hand_computed(sparsity, expected):
    got = erk_sparsities({"a": (10, 10), "b": (100, 100)}, sparsity)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], abs=1e-12)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8, 0.95])
def test_erk_budget_and_proportionality(sparsity):
    p = params()
    got = layer_sparsities(p, sparsity, "erk")
    sizes = {k + "/kernel": v["kernel"].size for k, v in p.items()}
    kept = sum((1 - got[k]) * sizes[k] for k in got)
    assert kept == pytest.approx((1 - sparsity) * sum(sizes.values()))
    shapes = {k + "/kernel": v["kernel"].shape for k, v in p.items()}
    raw = {k: sum(s) / np.prod(s) for k, s in shapes.items()}
    sparse = [k for k in got if got[k] > 0]
    for a in sparse:  # density / raw is the same eps for every non-dense layer
        for b in sparse:
            assert (1 - got[a]) / raw[a] == pytest.approx((1 - got[b]) / raw[b])


def test_uniform_and_map():
    p = params()
    assert layer_sparsities(p, 0.7) == dict.fromkeys(
        ["Conv_0/kernel", "Dense_0/kernel", "Dense_1/kernel"], 0.7
    )
    targets = {"Conv_0/kernel": 0.5, "Dense_0/kernel": 0.9, "Dense_1/kernel": 0.0}
    assert layer_sparsities(p, targets) == targets
    masks = distributed_magnitude(p, targets)
    for path, s in targets.items():
        layer = path.split("/")[0]
        m = np.asarray(masks[layer]["kernel"])
        assert m.sum() == round(m.size * (1 - s))
        expected = magnitude({"k": p[layer]["kernel"]}, s, where=lambda *_: True)["k"]
        np.testing.assert_array_equal(m, np.asarray(expected))


@pytest.mark.parametrize("distribution", ["uniform", "erk", "global"])
def test_distributed_magnitude_total_kept(distribution):
    p = params()
    masks = distributed_magnitude(p, 0.8, distribution)
    total = sum(v["kernel"].size for v in p.values())
    kept = sum(int(np.asarray(masks[k]["kernel"]).sum()) for k in p)
    assert abs(kept - 0.2 * total) <= len(p)
    if distribution == "global":
        expected = magnitude(p, 0.8, scope="global")
        for k in p:
            np.testing.assert_array_equal(masks[k]["kernel"], expected[k]["kernel"])


@pytest.mark.parametrize(
    ("sparsity", "distribution", "match"),
    [
        ({"Conv_0/kernel": 0.5}, "uniform", "missing"),
        (
            {"Conv_0/kernel": 0.5, "Dense_0/kernel": 0.5, "Dense_1/kernel": 0.5, "x": 0.1},
            "uniform",
            "unknown",
        ),
        ({"Conv_0/kernel": 1.5, "Dense_0/kernel": 0.5, "Dense_1/kernel": 0.5}, "uniform", "Conv_0"),
        (0.5, "lognormal", "distribution"),
        (1.0, "uniform", "sparsity"),
    ],
)
def test_bad_distributions(sparsity, distribution, match):
    with pytest.raises(lscjax.LscError, match=match):
        layer_sparsities(params(), sparsity, distribution)
