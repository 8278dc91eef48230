"""Trellis (dependent) quantization against oracles: the Viterbi search equals exhaustive search
on short chains; at high rate on a Laplacian source its coded rate lies below the Gish-Pierce
rate of the best entropy-coded scalar quantizer; rate falls with lam; pruned zeros stay 0."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError, coding
from lscjax._src.quant import trellis


def exhaustive_cost(x, weight, lengths, lam, kmax):
    """The least cost of one chain x [C] over every level sequence in [-kmax, kmax]^C (NumPy)."""
    best = math.inf
    for ks in itertools.product(range(-kmax, kmax + 1), repeat=len(x)):
        state, cost = 0, 0.0
        for xj, wj, k in zip(x, weight, ks, strict=True):
            q = state >> 1
            if q == 0 and abs(k) > kmax - 1:
                break  # quantizer 0's levels stop at kmax - 1
            m = 2 * k - q * int(np.sign(k))
            cost += wj * (xj - m) ** 2 + lam * lengths[q][k + kmax]
            state = int(trellis.NEXT_STATE[state, k & 1])
        else:
            best = min(best, cost)
    return best


def chain_cost(x, weight, lengths, lam, kmax, levels, quantizers):
    m = trellis.values_of(levels, quantizers)
    rate = lengths[quantizers, levels + kmax]
    return float(np.sum(weight * (x - m) ** 2 + lam * rate))


def test_viterbi_finds_the_cheapest_level_sequence():
    rng = np.random.default_rng(0)
    kmax = 2
    x = rng.uniform(-3.5, 3.5, size=(6, 5)).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, size=x.shape).astype(np.float32)
    lengths = rng.uniform(0.5, 4.0, size=(2, 2 * kmax + 1)).astype(np.float32)
    lam = 0.7
    levels, quantizers = trellis.viterbi(
        jnp.asarray(x), jnp.asarray(weight), jnp.zeros(x.shape, bool), jnp.asarray(lengths),
        jnp.float32(lam), kmax=kmax,
    )  # fmt: skip
    levels, quantizers = np.asarray(levels), np.asarray(quantizers)
    k, q = trellis.chains(trellis.values_of(levels, quantizers))
    np.testing.assert_array_equal((k, q), (levels, quantizers))  # a path of the state machine
    for r in range(x.shape[0]):
        got = chain_cost(x[r], weight[r], lengths, lam, kmax, levels[r], quantizers[r])
        want = exhaustive_cost(x[r], weight[r], lengths, lam, kmax)
        assert got == pytest.approx(want, rel=1e-5)


def coded(q):
    """The bits of a trellis QArray in format 'trellis' (whole encoding)."""
    return 8 * len(coding.encode(q, "trellis", entropy="ans").to_bytes())


def test_rate_below_gish_pierce_on_a_laplacian_at_high_rate():
    b = 1.0
    w = np.random.default_rng(1).laplace(scale=b, size=(64, 2048)).astype(np.float32)
    q = lscjax.quant.rdq({"kernel": w}, 0.002, grid="trellis", max_bits=12)["kernel"]
    d = float(np.mean((np.asarray(q.dequantize(), np.float64) - w) ** 2))
    rate = coded(q) / w.size
    gish_pierce = math.log2(2 * math.e * b) - 0.5 * math.log2(12 * d)  # the scalar ECSQ's rate
    assert rate < gish_pierce - 0.08  # the trellis' granular gain; 4.7 bits here


def test_rate_falls_with_lam_and_pruned_zeros_stay_zero():
    rng = np.random.default_rng(2)
    w = rng.standard_t(4, size=(48, 256)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0.0
    rates, errors = [], []
    for lam in (0.003, 0.02, 0.1):
        q = lscjax.quant.rdq({"kernel": w}, lam, grid="trellis")["kernel"]
        back = np.asarray(q.dequantize())
        assert np.all(back[w == 0] == 0)
        rates.append(coded(q))
        errors.append(float(np.mean((back - w) ** 2)))
    assert rates[0] > rates[1] > rates[2]
    assert errors[0] < errors[1] < errors[2]


def test_the_codebook_is_the_union_grid_and_bad_max_bits_are_refused():
    w = np.random.default_rng(3).normal(size=(16, 32)).astype(np.float32)
    q = lscjax.quant.rdq({"kernel": w}, 0.01, grid="trellis")["kernel"]
    book = np.asarray(q.codebook)
    c = trellis.center(q.bits)
    assert book.size == 2**q.bits - 1 and book[c] == 0
    lattice = (np.arange(book.size) - c).astype(np.float32) * book[c + 1]
    np.testing.assert_array_equal(book, lattice)  # what the container stores as its step
    for bad in (1, trellis.MAX_BITS + 1):
        with pytest.raises(LscError, match="max_bits"):
            lscjax.quant.rdq({"kernel": w}, 0.01, grid="trellis", max_bits=bad)


def test_a_trellis_recipe_just_meets_its_bits():
    rng = np.random.default_rng(4)
    params = {
        f"Dense_{i}": {"kernel": rng.laplace(size=(32, 48)).astype(np.float32)} for i in (0, 1)
    }
    rc = lscjax.Recipe(
        "r", sparsity=0.0, quant="rdq", target_bits=3.0, format="trellis", entropy="ans"
    )
    model = lscjax.compress(params, rc)
    assert {e.format for e in model.encoded.values()} == {"trellis"}
    bits = sum(8 * len(e.to_bytes()) for e in model.encoded.values()) / (2 * 32 * 48)
    assert 2.8 < bits <= 3.0
    back = model.params()
    for name, leaf in params.items():  # trellis points: every row's codes follow the machine
        q = model.encoded[f"{name}/kernel"].quantized
        step = q.codebook[trellis.center(q.bits) + 1]
        m = np.rint(np.asarray(back[name]["kernel"]) / step).astype(np.int64)
        assert trellis.valid(m, trellis.chains(m)[1]).all()
        assert np.mean((np.asarray(back[name]["kernel"]) - leaf["kernel"]) ** 2) < 0.1
