"""lscjax.quant.rdq: entropy-constrained quantization against independent oracles.

Oracles: plain k-means and round-to-nearest (lam = 0), the Gish-Pierce high-rate formula on a
Laplacian source, a brute-force argmin, a hand computation of one weight's decision, and the
codec's own bit count.
"""

import jax
import numpy as np
import pytest

import lscjax
from lscjax._src.quant.rdq import assign

LAPLACE_N = 16384


def _entropy(codes) -> float:
    """Empirical entropy (bits per symbol) of integer codes."""
    counts = np.bincount(np.asarray(codes).reshape(-1).astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _q(params, lam, **kw):
    return lscjax.quant.rdq(params, lam, **kw)["Dense_0"]["kernel"]


@pytest.fixture(scope="module")
def gaussian():
    w = np.random.default_rng(0).normal(size=(64, 48)).astype(np.float32)
    return {"Dense_0": {"kernel": w, "bias": np.ones(48, np.float32)}}


@pytest.fixture(scope="module")
def laplace():
    w = np.random.default_rng(1).laplace(scale=1.0, size=(128, LAPLACE_N // 128))
    return {"Dense_0": {"kernel": w.astype(np.float32)}}


@pytest.mark.parametrize("sparse", [False, True])
def test_lam_zero_is_kmeans(gaussian, sparse):
    w = gaussian["Dense_0"]["kernel"]
    if sparse:
        w = np.where(np.abs(w) < 0.5, 0.0, w).astype(np.float32)
    params = {"Dense_0": {"kernel": w}}
    # rdq starts from k-means with its own default init ("linear")
    ref = lscjax.quant.kmeans(params, 4, init="linear")["Dense_0"]["kernel"]
    q = _q(params, 0.0, max_bits=4)
    np.testing.assert_array_equal(np.asarray(q.dequantize()), np.asarray(ref.dequantize()))
    # the same partition; rdq drops the codes k-means left empty, keeping their order
    used = np.unique(np.asarray(ref.codes))
    np.testing.assert_array_equal(np.searchsorted(used, np.asarray(ref.codes)), q.codes)
    if sparse:
        assert q.codebook[0] == 0.0
        np.testing.assert_array_equal(np.asarray(q.codes) == 0, w == 0)


@pytest.mark.parametrize("sparse", [False, True])
def test_lam_zero_uniform_is_round_to_nearest(gaussian, sparse):
    w = gaussian["Dense_0"]["kernel"]
    if sparse:
        w = np.where(np.abs(w) < 0.5, 0.0, w).astype(np.float32)
    bits = 4
    maxq = 2**bits - 1 - int(sparse)
    lo, hi = min(w.min(), 0.0), max(w.max(), 0.0)
    step = (hi - lo) / maxq
    zero = np.round(-lo / step)
    rtn = step * (np.clip(np.round(w / step) + zero, 0, maxq) - zero)
    rtn = np.where(w == 0, 0.0, rtn)
    q = _q({"Dense_0": {"kernel": w}}, 0.0, grid="uniform", max_bits=bits)
    np.testing.assert_allclose(np.asarray(q.dequantize()), rtn, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("lam", [1e-4, 1e-3])
def test_laplace_high_rate_gish_pierce(laplace, lam):
    """h(X) - 1/2 log2(12 D): the entropy-coded uniform quantizer's rate at high rate."""
    w = laplace["Dense_0"]["kernel"]
    h = np.log2(2 * np.e * 1.0)  # differential entropy of Laplace(b = 1), bits

    def gish_pierce(q):
        d = np.mean((np.asarray(q.dequantize()) - w) ** 2)
        return h - 0.5 * np.log2(12 * d)

    uniform = _q(laplace, lam, grid="uniform")
    assert _entropy(uniform.codes) > 5  # high rate
    assert abs(_entropy(uniform.codes) - gish_pierce(uniform)) < 0.05
    ecvq = _q(laplace, lam, grid="kmeans")
    assert _entropy(ecvq.codes) <= gish_pierce(ecvq) + 0.05


def test_coder_pays_the_model_rate(laplace):
    """The rANS stream of rdq's codes costs their empirical entropy (plus < 1%)."""
    q = _q(laplace, 1e-2, grid="kmeans")
    enc = lscjax.coding.encode(q, "dense", entropy="ans")
    rate = enc.value_bits / LAPLACE_N
    assert _entropy(q.codes) <= rate < 1.01 * _entropy(q.codes) + 0.01


@pytest.mark.parametrize("grid", ["kmeans", "uniform"])
def test_rate_falls_and_distortion_grows_with_lam(gaussian, grid):
    w = gaussian["Dense_0"]["kernel"]
    rates, errors = [], []
    for lam in (0.0, 1e-3, 1e-2, 3e-2, 1e-1, 1.0):
        q = _q(gaussian, lam, grid=grid, max_bits=4)
        rates.append(_entropy(q.codes))
        errors.append(float(np.mean((np.asarray(q.dequantize()) - w) ** 2)))
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False)), rates
    # distortion grows (up to the local optimum a small lam may improve on)
    assert all(b >= 0.99 * a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] > 10 * errors[0]
    assert rates[-1] < 1.0 < 3.0 < rates[0]


def test_envelope_assignment_is_the_brute_force_argmin():
    rng = np.random.default_rng(2)
    points = rng.normal(size=4000).astype(np.float32)
    centroids = np.append(rng.normal(size=40), [0.3, 0.3]).astype(np.float32)
    penalty = rng.uniform(0, 0.5, size=42).astype(np.float32)
    penalty[:5] = np.inf  # dropped codes
    fast = np.asarray(jax.jit(assign)(points, np.float32(3.0), centroids, penalty))
    cost = 3.0 * (points[:, None] - centroids[None, :]) ** 2 + penalty[None, :]
    np.testing.assert_allclose(cost[np.arange(4000), fast], cost.min(axis=1), rtol=1e-6)
    assert not np.any(fast < 5)


def test_weights_change_the_decision_as_computed_by_hand():
    """One weight at 1.6 between the grid values 1 (60 weights) and 2 (4 weights).

    Grid (max_bits=2, min-max): -1, 0, 1, 2. With lam = 0.3 the code lengths (rANS model:
    p ~ 2 ** (round(4 log2 count) / 4)) make value 1 cheaper: the rate saved outweighs the
    extra distortion (0.36 - 0.16) / Var(W). With importance 50 on that weight the distortion
    term is 50 / mean(importance) times larger and value 2 wins.
    """
    w = np.array([1.0] * 60 + [2.0] * 4 + [-1.0] * 4 + [1.6], np.float32).reshape(1, -1)
    lam = 0.3  # the high-rate step sqrt(6 lam Var / ln 2) = 0.87 stays below the grid's 1
    var = float(np.var(w))

    def lengths(counts):
        q = np.round(4 * np.log2(counts))
        p = 2.0 ** (q / 4)
        return -np.log2(p / p.sum())

    # counts of (-1, 1, 2) with the odd weight at 1 or at 2
    at1, at2 = lengths(np.array([4, 61, 4])), lengths(np.array([4, 60, 5]))

    def picks_one(importance):
        cost1 = importance * 0.36 / var + lam * at1[1]
        cost2 = importance * 0.16 / var + lam * at2[2]
        return cost1 < cost2

    n = w.size
    heavy = 50 / ((n - 1 + 50) / n)  # importance over its mean
    assert picks_one(1.0) and not picks_one(heavy)  # the hand computation
    params = {"Dense_0": {"kernel": w}}
    plain = np.asarray(_q(params, lam, grid="uniform", max_bits=2).dequantize())
    imp = np.ones_like(w)
    imp[0, -1] = 50
    weighted = np.asarray(
        _q(
            params, lam, grid="uniform", max_bits=2, weights={"Dense_0": {"kernel": imp}}
        ).dequantize()
    )
    assert plain[0, -1] == pytest.approx(1.0) and weighted[0, -1] == pytest.approx(2.0)
    np.testing.assert_allclose(plain[0, :-1], w[0, :-1], atol=1e-6)


def test_save_load_round_trip(gaussian, tmp_path):
    w = gaussian["Dense_0"]["kernel"]
    params = {"Dense_0": {"kernel": np.where(np.abs(w) < 0.7, 0, w).astype(np.float32)}}
    q = _q(params, 1e-2, max_bits=4)
    model = lscjax.CompressedModel(
        encoded={"Dense_0/kernel": lscjax.coding.encode(q, "lsc", entropy="ans")}, raw={}
    )
    lscjax.save(tmp_path / "m.lsc", model)
    back = lscjax.load(tmp_path / "m.lsc", layout="quantized")["Dense_0"]["kernel"]
    np.testing.assert_array_equal(back.codes, q.codes)
    np.testing.assert_array_equal(back.codebook, q.codebook)
    served = jax.jit(lambda p: lscjax.quant.dequantize(p))({"k": back})["k"]
    np.testing.assert_array_equal(served, q.dequantize())


def _encoded_bytes(q) -> int:
    return len(lscjax.coding.encode(q, "dense", entropy="ans").to_bytes())


@pytest.mark.parametrize("grid", ["kmeans", "uniform"])
def test_for_target_bits(gaussian, grid):
    q, lam = lscjax.quant.rdq_for_target(gaussian, bits=2.5, grid=grid, max_bits=4)
    leaf = q["Dense_0"]["kernel"]
    bits = 8 * _encoded_bytes(leaf) / leaf.codes.size
    assert 2.35 < bits <= 2.5 and lam > 0
    np.testing.assert_array_equal(q["Dense_0"]["bias"], gaussian["Dense_0"]["bias"])


def test_for_target_bytes_and_distortion(gaussian):
    w = gaussian["Dense_0"]["kernel"]
    q, _ = lscjax.quant.rdq_for_target(gaussian, bytes=700, max_bits=4)
    assert 650 < _encoded_bytes(q["Dense_0"]["kernel"]) <= 700
    q, lam = lscjax.quant.rdq_for_target(gaussian, distortion=0.05, max_bits=4)
    error = np.mean((np.asarray(q["Dense_0"]["kernel"].dequantize()) - w) ** 2) / np.var(w)
    assert 0.045 < error <= 0.05
    roomy, _ = lscjax.quant.rdq_for_target(gaussian, bits=8.0, max_bits=4)  # lam = 0 fits
    np.testing.assert_array_equal(
        roomy["Dense_0"]["kernel"].codes, _q(gaussian, 0.0, max_bits=4).codes
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "exactly one"),
        (dict(bits=3.0, bytes=100), "exactly one"),
        (dict(bits=-1.0), "bits"),
        (dict(bytes=10), "cannot be met"),
        (dict(distortion=1e-9), "distortion"),
    ],
)
def test_for_target_bad_arguments(gaussian, kwargs, match):
    with pytest.raises(lscjax.LscError, match=match):
        lscjax.quant.rdq_for_target(gaussian, max_bits=4, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(lam=True), "lam"),
        (dict(lam=1e-3, grid="lloyd"), "grid"),
        (dict(lam=1e-3, max_bits=0), "max_bits"),
        (dict(lam=1e-3, max_bits=11), "max_bits"),
        (dict(lam=1e-3, max_bits=4.0), "max_bits"),
        (dict(lam=1e-3, init="nope"), "init"),
        (dict(lam=1e-3, where=lambda p, _: False), "selects none"),
        (dict(lam=1e-3, weights={"Dense_0": {"kernel": -np.ones((64, 48))}}), "weights"),
    ],
)
def test_bad_arguments(gaussian, kwargs, match):
    lam = kwargs.pop("lam")
    with pytest.raises(lscjax.LscError, match=match):
        lscjax.quant.rdq(gaussian, lam, **kwargs)


@pytest.fixture(scope="module")
def two_scales():
    """Two layers of Gaussian weights whose standard deviations differ 10x."""
    rng = np.random.default_rng(2)
    return {
        "Dense_0": {"kernel": rng.normal(size=(64, 64)).astype(np.float32)},
        "Dense_1": {"kernel": (0.1 * rng.normal(size=(64, 32))).astype(np.float32)},
    }


def _flat(q) -> dict:
    return {k: np.asarray(v["kernel"].dequantize()) for k, v in q.items()}


@pytest.mark.parametrize("grid", ["kmeans", "uniform", "trellis"])
def test_selection_is_each_layer_at_its_rescaled_lam(two_scales, grid):
    # relative to the selection's variance V, layer l at lam solves the layer-relative problem
    # at lam x V / Var(W_l) (the objective times V / Var(W_l)), computed here by hand
    lam, max_bits = 0.01, 6
    w = {k: v["kernel"] for k, v in two_scales.items()}
    v_sel = sum(a.size * np.var(a) for a in w.values()) / sum(a.size for a in w.values())
    got = lscjax.quant.rdq(two_scales, lam, grid=grid, max_bits=max_bits, relative_to="selection")
    for k, a in w.items():
        one = {k: {"kernel": a}}
        ref = lscjax.quant.rdq(one, lam * v_sel / np.var(a), grid=grid, max_bits=max_bits)[k]
        # the same codes (up to rare float32 ties); the values up to rounding of the step
        assert (
            np.mean(np.asarray(got[k]["kernel"].codes) == np.asarray(ref["kernel"].codes)) > 0.999
        )
        np.testing.assert_allclose(
            got[k]["kernel"].codebook, ref["kernel"].codebook, rtol=1e-5, atol=1e-6 * np.std(a)
        )
    # relative to each layer, the same lam gives the layers the same relative distortion
    # (both are Gaussian), so the small layer's absolute error is about 100x smaller
    per_layer = _flat(lscjax.quant.rdq(two_scales, lam, grid=grid, max_bits=max_bits))
    rel = [np.mean((per_layer[k] - a) ** 2) / np.var(a) for k, a in w.items()]
    np.testing.assert_allclose(rel[0], rel[1], rtol=0.25)


def test_selection_takes_fewer_bits_at_equal_total_distortion(two_scales):
    # the layers' total squared error at their total bits is least when every layer has the
    # same slope of squared error per bit (equal absolute steps at high rate); at equal
    # relative distortion per layer the small layer is quantized far too finely. The
    # high-rate prediction of the saving is 0.5 x the weighted mean of log2(V / Var(W_l)),
    # about 0.8 bit per weight here; assert at least half of it.
    sizes, errors = {}, {}
    for relative_to in ("layer", "selection"):
        q, _ = lscjax.quant.rdq_for_target(
            two_scales, distortion=1e-3, grid="uniform", relative_to=relative_to
        )
        sizes[relative_to] = sum(_encoded_bytes(v["kernel"]) for v in q.values())
        errors[relative_to] = sum(
            np.sum((d - two_scales[k]["kernel"]) ** 2) for k, d in _flat(q).items()
        )
    w = [v["kernel"] for v in two_scales.values()]
    n = sum(a.size for a in w)
    v_sel = sum(a.size * np.var(a) for a in w) / n
    predicted = sum(a.size * 0.5 * np.log2(v_sel / np.var(a)) for a in w) / n
    assert predicted > 0.5
    saved = 8 * (sizes["layer"] - sizes["selection"]) / n
    assert saved > predicted / 2, (sizes, predicted)
    assert errors["selection"] <= 1e-3 * n * v_sel  # both meet the target
    assert errors["layer"] <= 1e-3 * n * v_sel


def test_relative_to_is_checked(gaussian):
    with pytest.raises(lscjax.LscError, match="relative_to"):
        lscjax.quant.rdq(gaussian, 1e-3, relative_to="model")
    with pytest.raises(lscjax.LscError, match="relative_to"):
        lscjax.quant.rdq_for_target(gaussian, bits=3.0, relative_to="model")
