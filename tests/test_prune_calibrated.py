"""SparseGPT and Wanda against hand-built oracles: H = I reduces SparseGPT to magnitude pruning,
planted correlated inputs order the reconstruction errors, patterns are exact."""

import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax._src.prune.hessian import LayerStats


def stats_of(x):
    """LayerStats computed directly (NumPy, float64) from inputs x [N, d]."""
    x = np.asarray(x, np.float64)
    return LayerStats(
        jnp.asarray(x.T @ x, jnp.float32), jnp.asarray(np.sqrt((x * x).sum(0)), jnp.float32), len(x)
    )


def identity_stats(d):
    return LayerStats(jnp.eye(d), jnp.ones(d), d)


@pytest.fixture(scope="module")
def planted():
    """Inputs with correlated features of widely different scales, and a kernel [64, 24]."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2048, 64))
    mix = np.eye(64) + 0.6 * rng.normal(size=(64, 64)) / 8
    x = (z @ mix) * np.exp(rng.normal(size=64))  # correlated, heavy per-feature scale spread
    w = rng.normal(size=(64, 24)).astype(np.float32)
    return x.astype(np.float32), {"layer": {"kernel": w}}


def recon(x, w, w2):
    return float(np.linalg.norm(x @ np.asarray(w) - x @ np.asarray(w2)))


@pytest.mark.parametrize("shape", [(40, 12), (3, 3, 4, 6)])
def test_sparsegpt_with_identity_hessian_keeps_magnitude_weights(shape):
    w = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    params = {"l": {"kernel": w}}
    d = int(np.prod(shape[:-1]))
    stats = {"l/kernel": identity_stats(d)}
    pruned, masks = lscjax.prune.sparsegpt(params, stats, 0.6, block_size=d)
    want = lscjax.prune.magnitude(params, 0.6)
    np.testing.assert_array_equal(masks["l"]["kernel"], want["l"]["kernel"])
    # no cross terms: kept weights are unchanged, pruned ones exactly 0
    np.testing.assert_array_equal(pruned["l"]["kernel"], np.where(want["l"]["kernel"], w, 0))


def test_sparsegpt_patterns_with_identity_hessian_equal_the_structured_magnitude_masks():
    w = np.random.default_rng(2).normal(size=(64, 40)).astype(np.float32)
    params = {"l": {"kernel": w}}
    stats = {"l/kernel": identity_stats(64)}
    _, nm = lscjax.prune.sparsegpt(params, stats, 0.5, pattern="2:4")
    np.testing.assert_array_equal(
        nm["l"]["kernel"], lscjax.prune.n_of_m(params, 2, 4)["l"]["kernel"]
    )
    _, blocks = lscjax.prune.sparsegpt(params, stats, 0.5, pattern=(8, 8), block_size=64)
    want = lscjax.prune.block_magnitude(params, 0.5, block=(8, 8))
    np.testing.assert_array_equal(blocks["l"]["kernel"], want["l"]["kernel"])


def test_reconstruction_error_sparsegpt_below_wanda_below_magnitude(planted):
    x, params = planted
    stats = {"layer/kernel": stats_of(x)}
    w = params["layer"]["kernel"]
    gpt, _ = lscjax.prune.sparsegpt(params, stats, 0.5)
    wan, _ = lscjax.prune.wanda(params, stats, 0.5)
    mag = lscjax.prune.apply(params, lscjax.prune.magnitude(params, 0.5))
    errors = [recon(x, w, p["layer"]["kernel"]) for p in (gpt, wan, mag)]
    assert errors[0] < errors[1] < errors[2], errors


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_patterns_are_exact(planted, method):
    x, params = planted
    stats = {"layer/kernel": stats_of(x)}
    prune = getattr(lscjax.prune, method)
    pruned, masks = prune(params, stats, 0.5, pattern="2:4")
    m = np.asarray(masks["layer"]["kernel"])
    np.testing.assert_array_equal(m.reshape(16, 4, 24).sum(axis=1), 2)
    assert np.all(np.asarray(pruned["layer"]["kernel"])[~m] == 0)
    _, masks = prune(params, stats, 0.5, pattern=(8, 4))
    m = np.asarray(masks["layer"]["kernel"])
    tiles = m.reshape(8, 8, 6, 4)
    assert np.all(tiles == tiles[:, :1, :, :1])  # constant on every 8 x 4 tile
    assert tiles[:, 0, :, 0].sum() == 24  # half of the 48 tiles kept
    _, masks = prune(params, stats, 0.75)
    assert float(np.mean(np.asarray(masks["layer"]["kernel"]))) == 0.25


def test_wanda_keeps_per_output_the_largest_weight_times_input_norm():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(10, 3)).astype(np.float32)
    norms = rng.uniform(0.1, 5.0, size=10).astype(np.float32)
    stats = {"l/kernel": LayerStats(jnp.diag(norms**2), jnp.asarray(norms), 1)}
    _, masks = lscjax.prune.wanda({"l": {"kernel": w}}, stats, 0.7)
    score = np.abs(w) * norms[:, None]
    for j in range(3):
        np.testing.assert_array_equal(
            np.flatnonzero(masks["l"]["kernel"][:, j]), np.sort(np.argsort(-score[:, j])[:3])
        )


def test_bad_arguments_are_refused_with_the_leaf_path(planted):
    x, params = planted
    stats = {"layer/kernel": stats_of(x)}
    with pytest.raises(LscError, match="pattern"):
        lscjax.prune.sparsegpt(params, stats, 0.5, pattern="4:2")
    with pytest.raises(LscError, match="damp"):
        lscjax.prune.sparsegpt(params, stats, 0.5, damp=-1.0)
    with pytest.raises(LscError, match="layer/kernel"):
        lscjax.prune.wanda(params, {"layer/kernel": stats_of(x[:, :32])}, 0.5)
    with pytest.raises(LscError, match="m=3"):
        lscjax.prune.wanda(params, stats, 0.5, pattern="1:3")
    with pytest.raises(LscError, match="selects none"):
        lscjax.prune.sparsegpt(params, {}, 0.5)
    with pytest.raises(LscError, match="no calibration stats"):
        lscjax.prune.sparsegpt(params, {}, 0.5, where=lambda p, _: p == "layer/kernel")
