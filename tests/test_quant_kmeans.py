"""Scalar k-means weight sharing: inits, Lloyd's monotone distortion, a NumPy Lloyd oracle, zeros."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax import LscError
from lscjax._src.quant.lloyd import INITS, lloyd, scalar_init, sorted_lloyd


def pruned_weights(shape, density, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_t(4, size=shape).astype(np.float32) * 0.05
    w[rng.random(shape) >= density] = 0.0
    return w


def numpy_lloyd(x, centroids, iters):
    """Independent brute-force Lloyd (dense distance matrix, float64). x [n], centroids [k]."""
    x, c = x.astype(np.float64), centroids.astype(np.float64).copy()
    for _ in range(iters):
        assign = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        for j in range(c.size):  # k iterations, vectorized over the points
            members = x[assign == j]
            if members.size:
                c[j] = members.mean()
    assign = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
    return c, np.mean((x - c[assign]) ** 2)


@pytest.mark.parametrize("k", [2, 7, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_linear_init_spans_min_to_max_of_nonzeros(k, seed):
    w = pruned_weights((40, 30), 0.3, seed).ravel()
    c = np.asarray(
        scalar_init(jnp.asarray(w), jnp.asarray(w != 0), jax.random.key(0), k=k, method="linear")
    )
    nz = w[w != 0]
    assert c[0] == nz.min() and c[-1] == nz.max()
    np.testing.assert_allclose(np.diff(c), (nz.max() - nz.min()) / (k - 1), rtol=1e-4)


@pytest.mark.parametrize("method", INITS)
def test_inits_lie_within_the_nonzero_values(method):
    w = pruned_weights((50, 20), 0.4, 3).ravel()
    c = np.asarray(
        scalar_init(jnp.asarray(w), jnp.asarray(w != 0), jax.random.key(1), k=16, method=method)
    )
    nz = w[w != 0]
    assert c.shape == (16,) and c.dtype == np.float32
    assert np.all(c >= nz.min()) and np.all(c <= nz.max())
    if method in ("random", "kmeans++", "density"):  # these pick actual data values
        assert np.all(np.isin(c, nz))


@pytest.mark.parametrize("method", INITS)
@pytest.mark.parametrize("k", [3, 16])
def test_lloyd_distortion_never_increases(method, k):
    w = pruned_weights((60, 50), 0.5, 4).ravel()
    x, valid = jnp.asarray(w), jnp.asarray(w != 0)
    start = scalar_init(x, valid, jax.random.key(2), k=k, method=method)
    _, _, trace = lloyd(x[:, None], valid, start[:, None], iters=25)
    trace = np.asarray(trace)
    assert trace.shape == (26,)
    assert np.all(np.diff(trace) <= 1e-6 * trace[:-1])
    assert trace[-1] < trace[0]


@settings(max_examples=15)
@given(seed=st.integers(0, 2**16), k=st.sampled_from([2, 4, 8, 16]), n=st.sampled_from([64, 300]))
def test_lloyd_distortion_matches_numpy_lloyd(seed, k, n):
    w = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    x, valid = jnp.asarray(w), jnp.ones(n, bool)
    start = scalar_init(x, valid, jax.random.key(0), k=k, method="linear")
    centroids, assign, trace = lloyd(x[:, None], valid, start[:, None], iters=20)
    _, reference = numpy_lloyd(w, np.asarray(start), 20)
    assert float(trace[-1]) <= 1.05 * reference + 1e-9
    assert float(trace[-1]) >= 0.95 * reference - 1e-9
    # the reported distortion is the one of the returned centroids and assignment
    c = np.asarray(centroids)[:, 0]
    np.testing.assert_allclose(np.mean((w - c[np.asarray(assign)]) ** 2), trace[-1], rtol=1e-4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("iters,tol", [(3, 0.0), (200, 0.0), (200, 1e-6)])
def test_sorted_lloyd_follows_the_jitted_lloyd(weighted, iters, tol):
    rng = np.random.default_rng(7)
    x = (rng.standard_t(4, 3000) * 0.02).astype(np.float32)
    x[:40] = x[40:80]  # repeated values
    weights = rng.random(x.size).astype(np.float32) if weighted else None
    start = np.linspace(x.min(), x.max(), 13, dtype=np.float32)
    start[5] = start[4]  # a centroid that loses all its points keeps its position
    got = sorted_lloyd(x, start, iters=iters, tol=tol, weights=weights)
    want = lloyd(
        jnp.asarray(x)[:, None],
        jnp.ones(x.size, bool),
        jnp.asarray(start)[:, None],
        iters=iters,
        tol=tol,
        weights=None if weights is None else jnp.asarray(weights),
    )[0][:, 0]
    assert got.dtype == np.float32 and got.shape == (13,)
    np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-6 * np.abs(x).max())


def test_lloyd_vector_points_match_numpy_distances():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    c, assign, trace = lloyd(jnp.asarray(x), jnp.ones(200, bool), jnp.asarray(x[:6]), iters=10)
    d = ((x[:, None, :] - np.asarray(c)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(assign), d.argmin(1))
    assert np.all(np.diff(np.asarray(trace)) <= 1e-6 * np.asarray(trace)[:-1])


def test_lloyd_does_not_retrace_for_same_shapes():
    traced = jax.jit(chex.assert_max_traces(lloyd.__wrapped__, n=1), static_argnames="iters")
    for seed in range(3):
        w = jnp.asarray(np.random.default_rng(seed).normal(size=(300, 1)), jnp.float32)
        traced(w, jnp.ones(300, bool), w[:8], iters=5)


PARAMS_SHAPES = {"Conv_0": (5, 5, 1, 8), "Dense_0": (60, 10)}


def make_params(density=0.2, seed=0):
    return {
        name: {
            "kernel": jnp.asarray(pruned_weights(shape, density, seed + i)),
            "bias": jnp.ones(shape[-1], jnp.float32),
        }
        for i, (name, shape) in enumerate(PARAMS_SHAPES.items())
    }


@pytest.mark.parametrize(("bits", "density"), [(1, 0.05), (2, 1.0), (5, 0.5), (8, 0.05), (9, 1.0)])
@pytest.mark.parametrize("init", INITS)
def test_kmeans_keeps_zeros_and_at_most_2_bits_values(bits, init, density):
    params = make_params(density)
    q = lscjax.quant.kmeans(params, bits, init=init, iters=10)
    dense = lscjax.quant.dequantize(q)
    for name in PARAMS_SHAPES:
        w, qa = np.asarray(params[name]["kernel"]), q[name]["kernel"]
        d = np.asarray(dense[name]["kernel"])
        assert qa.method == "kmeans" and qa.bits == bits and qa.shape == w.shape
        assert qa.codes.dtype == (np.uint8 if bits <= 8 else np.uint16)
        assert d.dtype == np.float32 and d.shape == w.shape
        np.testing.assert_array_equal(d == 0, w == 0)  # zeros exactly where the weights were
        has_zeros = bool((w == 0).any())
        if has_zeros:  # code 0 is the zero: the code array is sparse exactly where w is
            np.testing.assert_array_equal(np.asarray(qa.codes) == 0, w == 0)
            assert float(qa.codebook[0]) == 0.0
        assert np.unique(d[d != 0]).size <= 2**bits - int(has_zeros)
        assert qa.codebook.shape == (2**bits,)
        # every non-zero weight sits at its nearest shared value
        values = np.unique(d[d != 0])
        nz = w[w != 0]
        nearest = values[np.argmin(np.abs(nz[:, None] - values[None]), axis=1)]
        np.testing.assert_allclose(np.abs(nz - d[w != 0]), np.abs(nz - nearest), atol=1e-7)
        np.testing.assert_array_equal(np.asarray(q[name]["bias"]), 1.0)  # unselected: unchanged


def test_kmeans_bits_map_per_layer_and_storage():
    params = make_params(0.3)
    bits = {"Conv_0/kernel": 8, "Dense_0/kernel": 3}
    q = lscjax.quant.kmeans(params, bits)
    for name in PARAMS_SHAPES:
        qa = q[name]["kernel"]
        assert qa.bits == bits[f"{name}/kernel"]
        n = int(np.prod(PARAMS_SHAPES[name]))
        assert qa.storage_bits == n * qa.bits + 32 * 2**qa.bits
    assert lscjax.quant.storage_bits(q) == {
        f"{n}/kernel": q[n]["kernel"].storage_bits for n in PARAMS_SHAPES
    }


def test_kmeans_clusters_only_nonzeros_like_numpy_lloyd():
    w = pruned_weights((100, 40), 0.25, 9)
    q = lscjax.quant.kmeans({"kernel": w}, 4, iters=30, init="linear")["kernel"]
    nz = w[w != 0]
    start = np.linspace(nz.min(), nz.max(), 15)
    ref_c, ref_d = numpy_lloyd(nz, start, 30)
    got = np.asarray(q.dequantize())[w != 0]
    distortion = np.mean((nz - got) ** 2)
    assert abs(distortion - ref_d) <= 0.05 * ref_d
    np.testing.assert_allclose(np.sort(np.asarray(q.codebook)[1:]), np.sort(ref_c), atol=1e-5)


def test_kmeans_all_zero_layer():
    q = lscjax.quant.kmeans({"kernel": np.zeros((4, 3), np.float32)}, 5)["kernel"]
    np.testing.assert_array_equal(np.asarray(q.dequantize()), 0.0)


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, True])
def test_bits_outside_range_raise_naming_the_leaf(bits):
    with pytest.raises(ValueError, match="Conv_0/kernel"):
        lscjax.quant.kmeans(make_params(), bits)
    with pytest.raises(LscError, match="Dense_0/kernel"):
        lscjax.quant.kmeans(make_params(), {"Conv_0/kernel": 8, "Dense_0/kernel": bits})


def test_bits_map_missing_a_leaf_raises_naming_it():
    with pytest.raises(LscError, match="Dense_0/kernel"):
        lscjax.quant.kmeans(make_params(), {"Conv_0/kernel": 8})


def test_bad_init_iters_and_non_float_leaves_raise():
    with pytest.raises(LscError, match="init"):
        lscjax.quant.kmeans(make_params(), 4, init="median")
    with pytest.raises(LscError, match="iters"):
        lscjax.quant.kmeans(make_params(), 4, iters=-1)
    with pytest.raises(LscError, match="w/kernel"):
        lscjax.quant.kmeans({"w": {"kernel": np.ones((3, 3), np.int32)}}, 4)


def test_kmeans_reuses_the_compiled_clustering_for_same_shapes():
    lscjax.quant.kmeans(make_params(0.3, seed=11), 3, iters=7)
    compiled = (lloyd._cache_size(), scalar_init._cache_size())
    q = lscjax.quant.kmeans(make_params(0.3, seed=12), 3, iters=7)
    assert (lloyd._cache_size(), scalar_init._cache_size()) == compiled
    assert q["Dense_0"]["kernel"].bits == 3


def numpy_lloyd_converged(x, centroids):
    """NumPy Lloyd (float64) until the assignment no longer changes."""
    x, c = x.astype(np.float64), centroids.astype(np.float64).copy()
    assign = None
    while True:
        new = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        if assign is not None and np.array_equal(new, assign):
            return np.mean((x - c[new]) ** 2)
        assign = new
        sums = np.bincount(assign, weights=x, minlength=c.size)
        counts = np.bincount(assign, minlength=c.size)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)


def test_converged_kmeans_matches_numpy_lloyd_run_to_convergence():
    w = np.random.default_rng(7).standard_t(3, size=(96, 64)).astype(np.float32)
    start = scalar_init(
        jnp.asarray(w.ravel()), jnp.ones(w.size, bool), jax.random.key(0), k=32, method="linear"
    )
    q = lscjax.quant.kmeans({"k": {"kernel": w}}, 5)["k"]["kernel"]
    got = float(np.mean((np.asarray(q.dequantize()) - w) ** 2))
    reference = numpy_lloyd_converged(w.ravel(), np.asarray(start))
    assert got <= 1.01 * reference
    fixed = lscjax.quant.kmeans({"k": {"kernel": w}}, 5, iters=30)["k"]["kernel"]
    assert got < float(np.mean((np.asarray(fixed.dequantize()) - w) ** 2))


def test_weighted_kmeans_with_equal_weights_is_plain_kmeans():
    w = pruned_weights((40, 30), 0.5, 8)
    params = {"k": {"kernel": w}}
    plain = lscjax.quant.kmeans(params, 4)["k"]["kernel"]
    weighted = lscjax.quant.kmeans(params, 4, weights={"k": {"kernel": np.full(w.shape, 3.0)}})
    np.testing.assert_array_equal(weighted["k"]["kernel"].codes, plain.codes)
    np.testing.assert_allclose(weighted["k"]["kernel"].codebook, plain.codebook, rtol=1e-6)


def test_weighted_kmeans_centroids_are_weighted_means():
    w = pruned_weights((40, 30), 1.0, 9)
    importance = np.random.default_rng(9).uniform(0, 4, size=w.shape).astype(np.float32)
    q = lscjax.quant.kmeans({"k": {"kernel": w}}, 3, weights={"k": {"kernel": importance}})
    q = q["k"]["kernel"]
    codes = np.asarray(q.codes).ravel()
    for j in np.unique(codes):  # at convergence each centroid is its members' weighted mean
        sel = codes == j
        mean = np.sum(w.ravel()[sel] * importance.ravel()[sel]) / np.sum(importance.ravel()[sel])
        np.testing.assert_allclose(q.codebook[j], mean, rtol=1e-4, atol=1e-6)
    with pytest.raises(LscError, match="k/kernel"):
        lscjax.quant.kmeans({"k": {"kernel": w}}, 3, weights={"k": {"kernel": importance[:2]}})


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_leaf_quantizes_as_its_float32_values(dtype):
    """A bf16 / f16 leaf (values exact in that dtype, with many ties) gets the codes and the
    float32 codebook of the same values given as float32, and dequantizes in float32."""
    values = np.array([-0.75, -0.125, 0.25, 1.5, 0.5, -1.0])  # exact in bf16 and f16
    w32 = values[np.random.default_rng(0).integers(0, 6, (40, 12))].astype(np.float32)
    q = lscjax.quant.kmeans({"kernel": jnp.asarray(w32, dtype)}, 2)["kernel"]
    ref = lscjax.quant.kmeans({"kernel": jnp.asarray(w32)}, 2)["kernel"]
    assert q.codebook.dtype == jnp.float32 and q.codes.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(ref.codes))
    np.testing.assert_allclose(np.asarray(q.codebook), np.asarray(ref.codebook), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q.dequantize()), np.asarray(ref.dequantize()))


def test_per_channel_kmeans_is_numpy_lloyd_on_each_channel():
    w = pruned_weights((64, 6), 0.6, 9)
    q = lscjax.quant.kmeans({"k": {"kernel": w}}, 3, per_channel=True, init="density")["k"][
        "kernel"
    ]
    assert q.codebook.shape == (6, 8) and np.all(np.asarray(q.codebook[:, 0]) == 0)
    dense = np.asarray(q.dequantize())
    assert np.all((dense == 0) == (w == 0))
    for c in range(6):
        nz = w[:, c][w[:, c] != 0]
        start = scalar_init(
            jnp.asarray(nz), jnp.ones(nz.size, bool), jax.random.key(0), k=7, method="density"
        )
        got = float(np.mean((dense[:, c][w[:, c] != 0] - nz) ** 2))
        assert got <= 1.01 * numpy_lloyd_converged(nz, np.asarray(start)) + 1e-12
        # every channel's values are its own codebook's
        assert set(np.unique(dense[:, c])) <= set(np.asarray(q.codebook[c]).tolist())


def test_per_channel_kmeans_of_conv_kernel_and_rank_one_leaf():
    w = np.random.default_rng(3).normal(size=(3, 3, 4, 5)).astype(np.float32)
    q = lscjax.quant.kmeans({"c": {"kernel": w}}, 2, per_channel=True)["c"]["kernel"]
    assert q.codebook.shape == (5, 4) and q.codes.shape == w.shape
    assert np.mean((np.asarray(q.dequantize()) - w) ** 2) < np.mean(w**2)
    with pytest.raises(LscError, match="'b'.*rank >= 2"):
        lscjax.quant.kmeans(
            {"b": np.ones(4, np.float32)}, 2, per_channel=True, where=lambda p, _: True
        )
