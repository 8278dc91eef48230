"""QArray storage accounting agrees with the codecs, and QArrays survive encode/decode."""

import numpy as np
import pytest

import lscjax


def quantized(method):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 20)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    params = {"kernel": w}
    make = {
        "kmeans": lambda: lscjax.quant.kmeans(params, 5),
        "kmeans16": lambda: lscjax.quant.kmeans(params, 10),
        "binarize": lambda: lscjax.quant.binarize(params, scale="row"),
        "product": lambda: lscjax.quant.product(params, 8, 5),
        "residual": lambda: lscjax.quant.residual(params, 4, 2),
        "residual_vector": lambda: lscjax.quant.residual(params, 4, 2, sub_dim=5),
    }
    return make[method]()["kernel"]


@pytest.mark.parametrize(
    "method", ["kmeans", "kmeans16", "binarize", "product", "residual", "residual_vector"]
)
def test_dense_encoding_accounts_codes_and_codebook_like_qarray(method):
    q = quantized(method)
    enc = lscjax.coding.encode(q, "dense")
    assert enc.value_bits == q.code_bits  # bits per code, every code
    # index bits: the 32-bit codebook entries plus the shape prefix and byte padding
    assert q.codebook_bits <= enc.index_bits < q.codebook_bits + 256
    back = lscjax.coding.decode_qarray(enc)
    assert (back.method, back.bits, back.shape) == (q.method, q.bits, q.shape)
    np.testing.assert_array_equal(np.asarray(back.dequantize()), np.asarray(q.dequantize()))


@pytest.mark.parametrize("entropy", ["none", "huffman"])
def test_ri_coding_of_kmeans_codes_stores_only_non_zero_codes(entropy):
    q = quantized("kmeans")
    enc = lscjax.coding.encode(q, "ri", entropy=entropy, k=5)
    nonzeros = int(np.count_nonzero(np.asarray(q.codes)))
    if entropy == "none":  # one 5-bit code per non-zero (and per filler zero)
        assert enc.value_bits % q.bits == 0 and enc.value_bits // q.bits >= nonzeros
    assert enc.value_bits + enc.index_bits < q.storage_bits
    back = lscjax.coding.decode_qarray(enc)
    np.testing.assert_array_equal(np.asarray(back.codes), np.asarray(q.codes))
