"""Gong et al. 2014: binarization, product and residual quantization of dense layers."""

import numpy as np
import pytest

import lscjax
from lscjax import LscError


def dense_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": rng.normal(size=(120, 30)).astype(np.float32),
            "bias": np.zeros(30, np.float32),
        },
        "Dense_1": {
            "kernel": rng.normal(size=(30, 10)).astype(np.float32),
            "bias": np.zeros(10, np.float32),
        },
    }


def mse(params, q):
    dense = lscjax.quant.dequantize(q)
    return {
        name: float(np.mean((np.asarray(dense[name]["kernel"]) - params[name]["kernel"]) ** 2))
        for name in params
    }


@pytest.mark.parametrize("scale", ["layer", "row"])
def test_binarize_is_sign_times_mean_abs(scale):
    params = dense_params(1)
    q = lscjax.quant.binarize(params, scale=scale)
    for name in params:
        w = params[name]["kernel"]
        a = np.abs(w).mean() if scale == "layer" else np.abs(w).mean(axis=1, keepdims=True)
        expected = np.where(w >= 0, a, -a)
        qa = q[name]["kernel"]
        assert qa.method == "binarize" and qa.bits == 1 and qa.codes.dtype == np.uint8
        np.testing.assert_allclose(np.asarray(qa.dequantize()), expected, rtol=1e-6)
        assert qa.storage_bits == w.size + 32 * (2 if scale == "layer" else 2 * w.shape[0])
        np.testing.assert_array_equal(q[name]["bias"], params[name]["bias"])


def test_product_error_falls_as_k_grows():
    params = {"Dense_0": dense_params(2)["Dense_0"]}
    errors = [mse(params, lscjax.quant.product(params, k, 2)) for k in (1, 8, 64)]
    for name in params:
        curve = [e[name] for e in errors]
        assert np.all(np.diff(curve) < 0), curve


def test_product_layout_and_storage():
    params = dense_params(3)
    q = lscjax.quant.product(
        params,
        {"Dense_0/kernel": 16, "Dense_1/kernel": 8},
        {"Dense_0/kernel": 5, "Dense_1/kernel": 2},
    )
    a, b = q["Dense_0"]["kernel"], q["Dense_1"]["kernel"]
    assert a.codes.shape == (120, 6) and a.codebook.shape == (6, 16, 5) and a.bits == 4
    assert b.codes.shape == (30, 5) and b.codebook.shape == (5, 8, 2) and b.bits == 3
    # Gong et al.: 32 * k * n codebook bits + log2(k) * m * s code bits
    assert a.storage_bits == 32 * 16 * 30 + 4 * 120 * 6
    # every sub-vector is one of its segment's centroids, the nearest one
    w, codebook, codes = (
        params["Dense_0"]["kernel"].reshape(120, 6, 5),
        np.asarray(a.codebook),
        np.asarray(a.codes),
    )
    d = ((w[:, :, None, :] - codebook[None]) ** 2).sum(-1)  # [m, s, k]
    np.testing.assert_array_equal(codes, d.argmin(-1))


def test_residual_error_falls_as_stages_grow():
    params = {"Dense_0": dense_params(4)["Dense_0"]}
    errors = [mse(params, lscjax.quant.residual(params, 4, stages)) for stages in (1, 2, 3, 4)]
    for name in params:
        curve = [e[name] for e in errors]
        assert np.all(np.diff(curve) < 0), curve
    q = lscjax.quant.residual(params, 4, 3)["Dense_0"]["kernel"]
    assert q.codes.shape == (3, 120, 30) and q.codebook.shape == (3, 4) and q.bits == 2
    assert q.storage_bits == 3 * 120 * 30 * 2 + 32 * 3 * 4


@pytest.mark.parametrize("sub_dim", [30, 5])  # whole rows (Gong et al.), sub-vectors
def test_vector_residual_error_falls_as_stages_grow(sub_dim):
    params = {"Dense_0": dense_params(4)["Dense_0"]}
    errors = [
        mse(params, lscjax.quant.residual(params, 16, t, sub_dim=sub_dim))["Dense_0"]
        for t in (1, 2, 3, 4)
    ]
    assert np.all(np.diff(errors) < 0), errors
    q = lscjax.quant.residual(params, 16, 3, sub_dim=sub_dim)["Dense_0"]["kernel"]
    s = 30 // sub_dim
    assert q.codes.shape == (3, 120, s) and q.codebook.shape == (3, 16, sub_dim) and q.bits == 4
    assert q.storage_bits == 3 * 120 * s * 4 + 32 * 3 * 16 * sub_dim
    scalar = lscjax.quant.residual(params, 16, 3)["Dense_0"]["kernel"]
    assert q.code_bits == scalar.code_bits // sub_dim  # one code per sub-vector, not per weight


@pytest.mark.parametrize("k", [0, -3, 2**16 + 1, 1.5])
def test_k_out_of_range_raises_naming_the_leaf(k):
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        lscjax.quant.product(dense_params(), k, 2)
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        lscjax.quant.residual(dense_params(), k, 2)


@pytest.mark.parametrize("sub_dim", [4, 7, 0])
def test_sub_dim_not_dividing_the_row_raises_naming_the_leaf(sub_dim):
    # rows of Dense_0 have 30 entries: 4 and 7 do not divide them; 0 is not a length
    with pytest.raises(LscError, match="Dense_0/kernel"):
        lscjax.quant.product(dense_params(), 4, sub_dim)
    with pytest.raises(LscError, match="Dense_0/kernel"):
        lscjax.quant.residual(dense_params(), 4, 2, sub_dim=sub_dim)


def test_stages_and_scale_validation():
    with pytest.raises(LscError, match="Dense_0/kernel"):
        lscjax.quant.residual(dense_params(), 4, 0)
    with pytest.raises(LscError, match="scale"):
        lscjax.quant.binarize(dense_params(), scale="column")
