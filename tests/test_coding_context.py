"""The "context" entropy stage: bit-exact round trips, its size against the conditional entropy
of a source with known per-row and per-column distributions, and crafted malformed streams."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax import FormatError, coding
from lscjax._src.coding.bitstream import BitWriter
from lscjax._src.coding.context import ContextCoder
from lscjax._src.coding.encoded import HEADER_BYTES, MAGIC, VERSION
from lscjax._src.coding.entropy import ENTROPIES
from lscjax._src.coding.formats import NAMES
from lscjax._src.coding.values import DTYPES


def round_trip(array, fmt="dense"):
    enc = coding.encode(array, fmt, entropy="context")
    data = enc.to_bytes()
    back = coding.Encoded.from_bytes(data)
    out = coding.decode(back)
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert 8 * len(data) == enc.total_bits + 8 * HEADER_BYTES
    assert (back.value_bits, back.index_bits) == (enc.value_bits, enc.index_bits)
    return enc


@st.composite
def code_arrays(draw):
    """uint8 / uint16 code arrays of 0-3 axes with alphabets of 1..256 symbols, some with a
    per-column scale (a context the model can find), some constant (degenerate contexts)."""
    bits = draw(st.integers(1, 8))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=0, max_size=3)))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["uniform", "scaled", "constant"]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    if kind == "constant":
        return np.full(shape, rng.integers(0, top + 1), dtype)
    if kind == "uniform":
        return rng.integers(0, top + 1, shape).astype(dtype)
    cols = shape[-1] if shape else 1
    scale = rng.choice([0.05, 0.3, 1.0], cols)
    x = rng.standard_normal(shape) * scale * top / 4 + top / 2
    return np.clip(np.rint(x), 0, top).astype(dtype)


@settings(max_examples=60, deadline=None)
@given(array=code_arrays(), fmt=st.sampled_from(["dense", "lsc", "csr"]))
def test_round_trip_random_codes(array, fmt):
    if fmt != "dense" and array.ndim != 2:
        array = array.reshape(1, -1)
    round_trip(array, fmt)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0,), np.uint8),
        np.zeros((0, 5), np.uint8),
        np.full((3, 7), 5, np.uint8),
        np.arange(256, dtype=np.uint8).reshape(16, 16),
        np.array([[1, 0]] * 9, np.uint8),
        np.arange(70000, dtype=np.uint16) % 300,
        np.eye(40, dtype=np.uint8),
        np.array(3, np.uint8),
    ],
    ids=[
        "empty",
        "empty-rows",
        "one-symbol",
        "all-256",
        "two-columns",
        "wide-alphabet",
        "eye",
        "scalar",
    ],
)
def test_edge_cases(array):
    round_trip(array)


def test_float_values_stay_raw_and_index_streams_use_ans():
    rng = np.random.default_rng(0)
    w = np.where(rng.random((64, 64)) < 0.1, rng.standard_normal((64, 64)), 0).astype(np.float32)
    for fmt in ("lsc", "sri", "ri"):
        enc, ans = round_trip(w, fmt), coding.encode(w, fmt, entropy="ans")
        assert enc.payload == ans.payload  # same bits: only the flags byte differs


@pytest.mark.slow
def test_qarray_codes_and_the_container_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    params = {"Dense_0": {"kernel": rng.standard_normal((16, 32)).astype(np.float32)}}
    loaded = {}
    for entropy in ("ans", "context"):
        recipe = lscjax.recipe("lsc", sparsity=0.5, format="dense", entropy=entropy)
        model = lscjax.compress(params, recipe)
        lscjax.save(tmp_path / f"{entropy}.lsc", model)
        loaded[entropy] = lscjax.load(tmp_path / f"{entropy}.lsc", layout="quantized")
    ans, ctx = (loaded[e]["Dense_0"]["kernel"] for e in ("ans", "context"))
    np.testing.assert_array_equal(np.asarray(ctx.codes), np.asarray(ans.codes))
    np.testing.assert_array_equal(np.asarray(ctx.codebook), np.asarray(ans.codebook))


def discretized_normal(scale: float, top: int) -> np.ndarray:
    """P(clip(round(N(top/2, scale^2)), 0, top) = s) for s in 0..top, by the normal CDF."""
    edges = (np.arange(top + 2) - 0.5 - top / 2) / (scale * math.sqrt(2))
    cdf = 0.5 * (1 + np.array([math.erf(x) for x in edges]))
    cdf[0], cdf[-1] = 0.0, 1.0
    return np.diff(cdf)


def test_size_meets_the_conditional_entropy_of_a_two_way_scaled_source():
    """Codes whose distribution depends on a hidden class of the row (2 classes) and of the
    column (2 classes), assigned at random: the context coder must find the classes and code
    within 1% (plus its tables and class bits) of n H(X | row class, column class), computed
    from the four discretized normals; the static rANS model pays about n H(X)."""
    rng = np.random.default_rng(0)
    rows, cols, top = 512, 256, 15
    row_scale = np.array([0.4, 2.5])[rng.integers(0, 2, rows)]
    col_scale = np.array([0.6, 3.0])[rng.integers(0, 2, cols)]
    scale = row_scale[:, None] * col_scale[None, :]
    codes = np.clip(np.rint(rng.standard_normal((rows, cols)) * scale + top / 2), 0, top)
    codes = codes.astype(np.uint8)

    def h(p):
        p = p[p > 0]
        return float(-(p * np.log2(p)).sum())

    distributions = {s: discretized_normal(s, top) for s in np.unique(scale)}
    n = codes.size
    h_cond = sum(h(distributions[s]) * np.count_nonzero(scale == s) for s in distributions) / n
    mixture = sum(distributions[s] * np.count_nonzero(scale == s) for s in distributions) / n
    overhead = 4 * (top + 1) * 8 + rows + cols + 200  # tables, class bits, lengths, flush
    ctx = round_trip(codes)
    static = coding.encode(codes, "dense", entropy="ans")
    assert ctx.total_bits <= 1.01 * n * h_cond + overhead
    assert static.total_bits >= 0.99 * n * h(mixture)
    assert h(mixture) - h_cond > 0.5  # the source's context dependence is strong
    assert ctx.total_bits < 0.85 * static.total_bits


def test_no_context_structure_costs_at_most_a_small_table_over_ans():
    codes = np.random.default_rng(2).integers(0, 8, (128, 128)).astype(np.uint8)
    ctx, ans = round_trip(codes), coding.encode(codes, "dense", entropy="ans")
    assert ctx.total_bits <= ans.total_bits + 64


def test_fit_is_deterministic_and_writes_what_it_estimates():
    rng = np.random.default_rng(3)
    codes = np.clip(np.rint(rng.standard_normal((100, 80)) * rng.choice([1, 4], 80)) + 8, 0, 15)
    flat = codes.astype(np.int64).reshape(-1)
    a, b = ContextCoder.fit(4, flat, 80), ContextCoder.fit(4, flat, 80)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.col_classes, b.col_classes)
    w = BitWriter()
    a.write(w, flat)
    index = np.searchsorted(a.symbols, flat)
    counts = np.zeros(a.weights.shape, np.int64)
    np.add.at(counts, (a.contexts(flat.size), index), 1)
    estimate = a.size_bits(counts, flat.size)
    assert abs(sum(w.counts.values()) - estimate) <= 2 * 32


# -- crafted streams ------------------------------------------------------------------------


def context_blob(n: int, body) -> bytes:
    """A dense/context blob of n uint8 codes of width 2; `body(w)` writes the value stream."""
    w = BitWriter()
    w.gamma(1)
    w.gamma(n)  # shape (n,)
    w.gamma(2)  # value width 2
    body(w)
    flags = ENTROPIES.index("context")
    return (
        MAGIC
        + bytes([VERSION, NAMES.index("dense"), DTYPES.index("uint8"), flags])
        + (w.getvalue())
    )


def two_symbols(w, period=1, row_bits=0, col_bits=0):
    w.gamma(2)
    w.uint(0, 1)  # a list
    w.uints(np.array([0, 1]), 2)
    w.gamma(period)
    w.uint(row_bits, 2)
    w.uint(col_bits, 2)


def test_a_count_past_the_budget_is_refused_before_the_contexts_are_built():
    """The decoded array (1 byte per code) fits the budget; the decoder's working arrays do not."""
    n = 2**31 - 1
    with pytest.raises(FormatError, match="reading budget"):
        coding.Encoded.from_bytes(context_blob(n, two_symbols), max_bytes=n + 2**20)


def test_more_symbols_than_the_words_can_hold():
    def body(w):
        two_symbols(w, period=10**6)
        w.gamma(1)  # weight width 1
        w.uints(np.array([1, 1]), 1)
        w.gamma(1)
        w.uint(12345, 32)

    with pytest.raises(FormatError, match="cannot fit"):
        coding.Encoded.from_bytes(context_blob(10**6, body))


@pytest.mark.parametrize(
    "body,match",
    [
        (lambda w: two_symbols(w, period=0), "period 0"),
        (lambda w: two_symbols(w, period=9), "period.*exceeds"),
        (lambda w: two_symbols(w, row_bits=3), "class bits"),
        (
            lambda w: (
                two_symbols(w, period=4, col_bits=1),
                w.uints(np.zeros(4, int), 1),
                w.gamma(1),
                w.uints(np.array([0, 0, 1, 1]), 1),
                w.gamma(0),
            ),
            "empty table",
        ),
        (lambda w: (w.gamma(0), w.uint(0, 1)), "empty table"),
        (lambda w: two_symbols(w, row_bits=1), "truncated"),
    ],
    ids=["period-0", "period-too-long", "class-bits", "empty-context", "empty-set", "truncated"],
)
def test_crafted_context_streams(body, match):
    with pytest.raises(FormatError, match=match):
        coding.Encoded.from_bytes(context_blob(8, body))
