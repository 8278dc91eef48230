"""GPTQ against oracles: H = I is round-to-nearest (and plain k-means, per layer or per
channel), correlated inputs make it better than rounding, the k-means codebook is the NumPy
least-squares fit to its codes, sweeps alternated with refits lower the error, pruned zeros
stay 0; per-channel QArrays through coding and serving. The rate-aware rounding (lam > 0):
H = I is rdq, lam -> 0 is plain GPTQ, its rate falls with lam and its output error stays below
rdq's without compensation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax._src.prune.hessian import LayerStats
from lscjax._src.quant import gptq as gptq_module
from lscjax.flax import compressed_apply, to_block_sparse


def numpy_rtn(w, bits):
    """Round-to-nearest onto each output channel's min-max asymmetric grid (NumPy). w [d, n]."""
    maxq = 2**bits - 1
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    scale = (hi - lo) / maxq
    zero = np.round(-lo / scale)
    return scale * (np.clip(np.round(w / scale) + zero, 0, maxq) - zero)


@pytest.fixture(scope="module")
def correlated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 48)) @ (np.eye(48) + 0.3 * rng.normal(size=(48, 48)))
    x = (x * np.exp(0.5 * rng.normal(size=48))).astype(np.float32)
    w = rng.normal(size=(48, 20)).astype(np.float32)
    gram = x.astype(np.float64).T @ x
    stats = LayerStats(jnp.asarray(gram, jnp.float32), jnp.sqrt(jnp.diagonal(gram)), len(x))
    return x, {"l": {"kernel": w}}, {"l/kernel": stats}


def eye(d):
    return {"l/kernel": LayerStats(jnp.eye(d), jnp.ones(d), d)}


@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_with_identity_hessian_is_round_to_nearest(bits):
    w = np.random.default_rng(1).normal(size=(30, 7)).astype(np.float32)
    q = lscjax.quant.gptq({"l": {"kernel": w}}, eye(30), bits)["l"]["kernel"]
    assert q.codebook.shape == (7, 2**bits)
    np.testing.assert_allclose(q.dequantize(), numpy_rtn(w, bits), rtol=1e-6, atol=1e-6)


def test_gptq_kmeans_grid_with_identity_hessian_is_plain_kmeans():
    w = np.random.default_rng(2).standard_t(4, size=(40, 9)).astype(np.float32)
    params = {"l": {"kernel": w}}
    got = lscjax.quant.gptq(params, eye(40), 3, grid="kmeans")["l"]["kernel"]
    want = lscjax.quant.kmeans(params, 3)["l"]["kernel"]
    # the refit under H = I moves each entry to its cluster's mean: converged k-means' centroids
    np.testing.assert_allclose(got.codebook, want.codebook, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got.codes, want.codes)


def test_per_channel_gptq_with_identity_hessian_is_per_channel_kmeans():
    w = np.random.default_rng(4).standard_t(4, size=(40, 9)).astype(np.float32)
    w[np.random.default_rng(5).random(w.shape) < 0.3] = 0.0
    params = {"l": {"kernel": w}}
    got = lscjax.quant.gptq(params, eye(40), 3, grid="kmeans", per_channel=True)["l"]["kernel"]
    want = lscjax.quant.kmeans(params, 3, per_channel=True)["l"]["kernel"]
    assert got.codebook.shape == (9, 8) and np.all(np.asarray(got.codebook[:, 0]) == 0)
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_allclose(got.codebook, want.codebook, rtol=1e-6, atol=1e-6)
    assert np.all((np.asarray(got.dequantize()) == 0) == (w == 0))


def lstsq_codebook(x, w, codes, k, per_channel):
    """Entries minimising ||X W - X Q|| for fixed codes, by NumPy least squares (float64): the
    stacked system X B_c e = X w_c over the channels (one shared e), or one per channel."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    design = [x @ np.eye(k)[codes[:, c]] for c in range(w.shape[1])]  # X B_c [N, k]
    if not per_channel:
        a, b = np.concatenate(design), np.concatenate([x @ w[:, c] for c in range(w.shape[1])])
        return np.linalg.lstsq(a, b, rcond=None)[0]
    return np.stack(
        [np.linalg.lstsq(design[c], x @ w[:, c], rcond=None)[0] for c in range(w.shape[1])]
    )


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_kmeans_grid_codebook_is_the_least_squares_fit_to_its_codes(
    correlated, monkeypatch, per_channel, chunked
):
    """Also with the refit's normal equations accumulated over chunks of 3 of the 20 output
    channels (the last chunk padded)."""
    if chunked:
        monkeypatch.setattr(gptq_module, "REFIT_ELEMENTS", 48 * 4 * 3)
    x, params, _ = correlated
    w = params["l"]["kernel"]
    gram = x.astype(np.float64).T @ x
    # no damping: the refit then solves exactly the NumPy least-squares problem
    stats = {"l/kernel": LayerStats(jnp.asarray(gram, jnp.float32), jnp.ones(48), len(x))}
    q = lscjax.quant.gptq(params, stats, 2, grid="kmeans", per_channel=per_channel, damp=0.0)
    q = q["l"]["kernel"]
    codes = np.asarray(q.codes).astype(np.int64)
    want = lstsq_codebook(x, w, codes, 4, per_channel)
    used = np.eye(4, dtype=bool)[codes].any(0) if per_channel else np.isin(np.arange(4), codes)
    np.testing.assert_allclose(np.asarray(q.codebook)[used], want[used], rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("per_channel", [False, True])
def test_sweeps_alternated_with_refits_lower_the_output_error(correlated, monkeypatch, per_channel):
    x, params, stats = correlated
    w = params["l"]["kernel"]
    err = {}
    for refits in (1, gptq_module.REFITS):
        monkeypatch.setattr(gptq_module, "REFITS", refits)
        q = lscjax.quant.gptq(
            params, stats, 3, grid="kmeans", per_channel=per_channel, init="density"
        )
        err[refits] = np.linalg.norm(x @ w - x @ np.asarray(q["l"]["kernel"].dequantize()))
    assert err[gptq_module.REFITS] < 0.97 * err[1]


def test_per_channel_codebooks_beat_one_codebook_on_scaled_channels(correlated):
    x, params, stats = correlated
    scaled = {"l": {"kernel": params["l"]["kernel"] * np.geomspace(0.05, 5, 20, dtype=np.float32)}}
    w = scaled["l"]["kernel"]
    err = {}
    for per_channel in (False, True):
        q = lscjax.quant.gptq(scaled, stats, 3, grid="kmeans", per_channel=per_channel)
        err[per_channel] = np.linalg.norm(x @ w - x @ np.asarray(q["l"]["kernel"].dequantize()))
    assert err[True] < 0.6 * err[False]
    with pytest.raises(LscError, match="per_channel"):
        lscjax.quant.gptq(scaled, stats, 3, per_channel=True)  # uniform grids: per channel already


@pytest.mark.parametrize("grid", ["uniform", "kmeans"])
def test_gptq_error_below_round_to_nearest_on_correlated_inputs(correlated, grid):
    x, params, stats = correlated
    w = params["l"]["kernel"]
    q = lscjax.quant.gptq(params, stats, 3, grid=grid)["l"]["kernel"].dequantize()
    if grid == "uniform":
        rtn = numpy_rtn(w, 3)
    else:  # nearest centroid of the same (Hessian-weighted) codebook
        rtn = lscjax.quant.gptq(params, eye(48), 3, grid="kmeans")["l"]["kernel"]
        book = lscjax.quant.gptq(params, stats, 3, grid="kmeans")["l"]["kernel"].codebook
        rtn = np.asarray(book)[np.abs(w[..., None] - np.asarray(book)).argmin(-1)]
    err = np.linalg.norm(x @ w - x @ np.asarray(q))
    assert err < 0.8 * np.linalg.norm(x @ w - x @ rtn)


@pytest.mark.parametrize("grid", ["uniform", "kmeans"])
def test_gptq_after_sparsegpt_keeps_pruned_weights_zero(correlated, grid):
    _, params, stats = correlated
    pruned, masks = lscjax.prune.sparsegpt(params, stats, 0.5)
    q = lscjax.quant.gptq(pruned, stats, 4, grid=grid)["l"]["kernel"]
    dense = np.asarray(q.dequantize())
    assert np.all(dense[~np.asarray(masks["l"]["kernel"])] == 0)
    if grid == "kmeans":
        assert q.codebook[0] == 0 and q.codebook.shape == (16,)


def test_gptq_groups_have_their_own_grids(correlated):
    _, params, stats = correlated
    q = lscjax.quant.gptq(params, stats, 4, group_size=16)["l"]["kernel"]
    assert q.codebook.shape == (3, 20, 16)
    dense = np.asarray(q.dequantize())
    for g in range(3):  # every group's values lie on that group's grid
        rows = dense[16 * g : 16 * (g + 1)]
        assert np.all(np.any(np.isclose(rows[..., None], np.asarray(q.codebook[g])[None]), -1))
    with pytest.raises(LscError, match="group_size"):
        lscjax.quant.gptq(params, stats, 4, group_size=7)
    with pytest.raises(LscError, match="group_size"):
        lscjax.quant.gptq(params, stats, 4, grid="kmeans", group_size=16)
    with pytest.raises(LscError, match="grid"):
        lscjax.quant.gptq(params, stats, 4, grid="log")


class TwoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5)(nn.relu(nn.Dense(32)(x)))


def test_per_channel_qarray_through_coding_and_serving():
    model = TwoDense()
    x = jax.random.normal(jax.random.key(0), (64, 16))
    params = model.init(jax.random.key(1), x)["params"]
    cal = lscjax.Calibration(lambda p, b: model.apply({"params": p}, b), [x])
    stats = cal.stats(params)
    pruned, _ = lscjax.prune.sparsegpt(params, stats, 0.5)
    q = lscjax.quant.gptq(pruned, stats, 4)
    leaf = q["Dense_0"]["kernel"]
    enc = lscjax.coding.encode(leaf, "lsc", entropy="ans")
    back = lscjax.coding.decode_qarray(enc)
    np.testing.assert_array_equal(back.codes, leaf.codes)
    np.testing.assert_array_equal(back.codebook, leaf.codebook)
    dense = lscjax.quant.dequantize(q)
    served = to_block_sparse(q, block=4)
    got = jax.jit(compressed_apply(model.apply))({"params": served}, x)
    np.testing.assert_allclose(got, model.apply({"params": dense}, x), rtol=1e-5, atol=1e-5)


def _output_error(x, w, q):
    return float(np.sum((x @ (w - np.asarray(q.dequantize()))) ** 2))


@pytest.mark.slow
def test_rate_aware_gptq_with_identity_hessian_is_rdq():
    """H = I (no damping) leaves nothing to compensate: the rate-aware rounding is rdq's."""
    w = np.random.default_rng(3).normal(size=(40, 12)).astype(np.float32)
    params = {"l": {"kernel": w}}
    got = lscjax.quant.gptq(params, eye(40), 4, grid="kmeans", damp=0.0, lam=0.02)["l"]["kernel"]
    want = lscjax.quant.rdq(params, 0.02, max_bits=4)["l"]["kernel"]
    np.testing.assert_allclose(got.dequantize(), want.dequantize(), rtol=1e-6, atol=1e-6)
    assert got.bits == want.bits


@pytest.mark.slow
def test_rate_aware_gptq_lam_zero_limit_is_plain_gptq(correlated):
    _, params, stats = correlated
    # the rate-aware sweep starts from rdq's codebook (init "linear"): the same init here
    plain = lscjax.quant.gptq(params, stats, 3, grid="kmeans", init="linear")["l"]["kernel"]
    tiny = lscjax.quant.gptq(params, stats, 3, grid="kmeans", lam=1e-12)["l"]["kernel"]
    np.testing.assert_allclose(tiny.dequantize(), plain.dequantize(), rtol=1e-6, atol=1e-6)


def _entropy(q, coded):
    counts = np.bincount(np.asarray(q.codes)[coded].astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [False, True])
def test_rate_aware_gptq_rate_falls_and_beats_uncompensated_rdq(correlated, pruned):
    x, params, stats = correlated
    w = params["l"]["kernel"]
    if pruned:
        w = np.where(np.abs(w) < 0.6, 0.0, w).astype(np.float32)
        params = {"l": {"kernel": w}}
    coded = w != 0
    diag = np.diag(stats["l/kernel"].gram)[:, None]
    importance = {"l": {"kernel": np.broadcast_to(diag, w.shape)}}
    rates = []
    for lam in (0.003, 0.03, 0.3):
        q = lscjax.quant.gptq(params, stats, 4, grid="kmeans", lam=lam)["l"]["kernel"]
        np.testing.assert_array_equal(np.asarray(q.dequantize()) == 0, ~coded)  # zeros: uncoded
        rates.append(_entropy(q, coded))
        ref = lscjax.quant.rdq(params, lam, max_bits=4, weights=importance)["l"]["kernel"]
        # at the same lam: output error bounded by rounding's without compensation, and well
        # below it at the high rate; about the same rate
        ratio = _output_error(x, w, q) / _output_error(x, w, ref)
        assert ratio < (0.9 if lam == 0.003 else 1.15), (lam, ratio)
        assert abs(rates[-1] - _entropy(ref, coded)) < 0.2
    assert rates[0] > rates[1] > rates[2]


def test_rate_aware_gptq_bad_lam(correlated):
    _, params, stats = correlated
    with pytest.raises(LscError, match="lam"):
        lscjax.quant.gptq(params, stats, 4, grid="kmeans", lam=-1.0)
    with pytest.raises(LscError, match="lam"):
        lscjax.quant.gptq(params, stats, 4, grid="uniform", lam=0.1)


@pytest.mark.parametrize("grid", ["uniform", "kmeans"])
def test_act_order_is_gptq_on_the_features_sorted_by_hessian_diagonal(correlated, grid):
    """Oracle: permute the kernel's rows and the Hessian by decreasing H_ii by hand, run GPTQ in
    index order, permute back."""
    _, params, stats = correlated
    s = stats["l/kernel"]
    order = np.argsort(-np.asarray(jnp.diagonal(s.gram)), kind="stable")
    w = np.asarray(params["l"]["kernel"])
    gram = np.asarray(s.gram)[order][:, order]
    permuted = {"l/kernel": LayerStats(jnp.asarray(gram), s.norms[order], s.count)}
    q = lscjax.quant.gptq({"l": {"kernel": w[order]}}, permuted, 3, grid=grid)
    want = np.zeros_like(w)
    want[order] = np.asarray(q["l"]["kernel"].dequantize())
    got = lscjax.quant.gptq(params, stats, 3, grid=grid, act_order=True)
    np.testing.assert_allclose(got["l"]["kernel"].dequantize(), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        want, lscjax.quant.gptq(params, stats, 3, grid=grid)["l"]["kernel"].dequantize()
    )
    with pytest.raises(LscError, match="act_order"):
        lscjax.quant.gptq(params, stats, 3, group_size=8, act_order=True)


@pytest.mark.slow
def test_rate_aware_gptq_with_act_order_is_the_permuted_sweep(correlated):
    """act_order with lam: the same as the rate-aware sweep of the hand-permuted kernel."""
    _, params, stats = correlated
    s = stats["l/kernel"]
    order = np.argsort(-np.asarray(jnp.diagonal(s.gram)), kind="stable")
    w = np.asarray(params["l"]["kernel"])
    permuted = {
        "l/kernel": LayerStats(
            jnp.asarray(np.asarray(s.gram)[order][:, order]), s.norms[order], s.count
        )
    }
    q = lscjax.quant.gptq({"l": {"kernel": w[order]}}, permuted, 3, grid="kmeans", lam=0.03)
    want = np.zeros_like(w)
    want[order] = np.asarray(q["l"]["kernel"].dequantize())
    got = lscjax.quant.gptq(params, stats, 3, grid="kmeans", act_order=True, lam=0.03)
    np.testing.assert_allclose(got["l"]["kernel"].dequantize(), want, rtol=1e-5, atol=1e-6)


def test_trellis_gptq_with_identity_hessian_is_rdq_trellis():
    w = np.random.default_rng(6).laplace(size=(30, 24)).astype(np.float32)
    params = {"l": {"kernel": w}}
    got = lscjax.quant.gptq(params, eye(30), 10, grid="trellis", lam=0.01, damp=0.0)
    want = lscjax.quant.rdq(params, 0.01, grid="trellis", max_bits=10)
    got, want = got["l"]["kernel"], want["l"]["kernel"]
    assert got.bits == want.bits
    np.testing.assert_array_equal(np.asarray(got.codebook), np.asarray(want.codebook))
    assert np.mean(np.asarray(got.codes) == np.asarray(want.codes)) > 0.99


def test_trellis_gptq_beats_trellis_rounding_on_correlated_inputs(correlated):
    x, params, stats = correlated
    w = params["l"]["kernel"]
    out = {}
    for name, q in (
        ("gptq", lscjax.quant.gptq(params, stats, 10, grid="trellis", lam=0.01)),
        ("rdq", lscjax.quant.rdq(params, 0.01, grid="trellis", max_bits=10)),
    ):
        q = q["l"]["kernel"]
        bits = 8 * len(lscjax.coding.encode(q, "trellis", entropy="ans").to_bytes())
        out[name] = (bits, np.linalg.norm(x @ w - x @ np.asarray(q.dequantize())))
    assert out["gptq"][0] <= 1.02 * out["rdq"][0]
    assert out["gptq"][1] < 0.8 * out["rdq"][1]
