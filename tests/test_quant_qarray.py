"""QArray: dequantize per method against NumPy indexing, storage bits, consistency checks, jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax.quant import QArray

RNG = np.random.default_rng(0)


def scalar_case(shape=(6, 4), k=8, bits=3):
    codes = RNG.integers(0, k, size=shape).astype(np.uint8)
    codebook = RNG.normal(size=k).astype(np.float32)
    return QArray(jnp.asarray(codes), jnp.asarray(codebook), "kmeans", bits, shape), codebook[codes]


def row_binarize_case(shape=(3, 2, 5)):
    codes = RNG.integers(0, 2, size=shape).astype(np.uint8)
    rows = int(np.prod(shape[:-1]))
    scale = RNG.random(rows).astype(np.float32)
    codebook = np.stack([-scale, scale], axis=1)
    expected = np.where(codes.reshape(rows, -1) == 1, scale[:, None], -scale[:, None])
    q = QArray(jnp.asarray(codes), jnp.asarray(codebook), "binarize", 1, shape)
    return q, expected.reshape(shape)


def product_case(m=5, s=3, k=4, sub_dim=2):
    codes = RNG.integers(0, k, size=(m, s)).astype(np.uint8)
    codebook = RNG.normal(size=(s, k, sub_dim)).astype(np.float32)
    expected = np.concatenate([codebook[j][codes[:, j]] for j in range(s)], axis=1)
    return QArray(
        jnp.asarray(codes), jnp.asarray(codebook), "product", 2, (m, s * sub_dim)
    ), expected


def residual_case(shape=(4, 7), stages=3, k=4):
    codes = RNG.integers(0, k, size=(stages, *shape)).astype(np.uint16)
    codebook = RNG.normal(size=(stages, k)).astype(np.float32)
    expected = sum(codebook[t][codes[t]] for t in range(stages))
    return QArray(jnp.asarray(codes), jnp.asarray(codebook), "residual", 2, shape), expected


def residual_vector_case(m=4, s=3, sub_dim=2, stages=3, k=4):
    codes = RNG.integers(0, k, size=(stages, m, s)).astype(np.uint8)
    codebook = RNG.normal(size=(stages, k, sub_dim)).astype(np.float32)
    expected = np.zeros((m, s * sub_dim), np.float32)
    for t in range(stages):
        for i in range(m):
            for j in range(s):
                expected[i, j * sub_dim : (j + 1) * sub_dim] += codebook[t, codes[t, i, j]]
    shape = (m, s * sub_dim)
    return QArray(jnp.asarray(codes), jnp.asarray(codebook), "residual", 2, shape), expected


CASES = {
    "kmeans": scalar_case,
    "binarize_row": row_binarize_case,
    "product": product_case,
    "residual": residual_case,
    "residual_vector": residual_vector_case,
}


@pytest.mark.parametrize("case", CASES)
def test_dequantize_matches_numpy_indexing(case):
    q, expected = CASES[case]()
    got = q.dequantize()
    assert got.dtype == jnp.float32 and got.shape == q.shape
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda t: t.dequantize())(q)), expected, rtol=1e-6
    )


@pytest.mark.parametrize("case", CASES)
def test_tree_dequantize_replaces_only_qarrays(case):
    q, expected = CASES[case]()
    tree = {"layer": {"kernel": q, "bias": jnp.arange(3.0)}, "other": None}
    out = lscjax.quant.dequantize(tree)
    np.testing.assert_allclose(np.asarray(out["layer"]["kernel"]), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["layer"]["bias"]), np.arange(3.0))
    assert out["other"] is None


@pytest.mark.parametrize("case", CASES)
def test_qarray_is_a_pytree_with_static_facts(case):
    q, _ = CASES[case]()
    leaves, treedef = jax.tree_util.tree_flatten(q)
    assert len(leaves) == 2  # codes and codebook; method, bits, shape are static
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (again.method, again.bits, again.shape) == (q.method, q.bits, q.shape)


def test_dequantize_jit_does_not_retrace_for_same_shapes():
    fn = jax.jit(chex.assert_max_traces(lscjax.quant.dequantize, n=1))
    for _ in range(3):
        q, expected = scalar_case()
        np.testing.assert_allclose(np.asarray(fn({"w": q})["w"]), expected, rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_storage_bits_codes_plus_32_bit_codebook(case):
    q, _ = CASES[case]()
    assert q.code_bits == np.asarray(q.codes).size * q.bits
    assert q.codebook_bits == 32 * np.asarray(q.codebook).size
    assert q.storage_bits == q.code_bits + q.codebook_bits
    assert lscjax.quant.storage_bits({"a": q, "b": jnp.ones(3)}) == {"a": q.storage_bits}


BAD = {
    "codes_shape": lambda q: QArray(q.codes[:-1], q.codebook, q.method, q.bits, q.shape),
    "codes_dtype": lambda q: QArray(
        q.codes.astype(jnp.int32), q.codebook, q.method, q.bits, q.shape
    ),
    "codebook_dtype": lambda q: QArray(
        q.codes, q.codebook.astype(jnp.float16), q.method, q.bits, q.shape
    ),
    "too_many_entries": lambda q: QArray(q.codes, q.codebook, q.method, 2, q.shape),
    "bits": lambda q: QArray(q.codes, q.codebook, q.method, 17, q.shape),
    "method": lambda q: QArray(q.codes, q.codebook, "lattice", q.bits, q.shape),
}


@pytest.mark.parametrize("bad", BAD)
def test_inconsistent_qarray_raises_naming_the_leaf(bad):
    q, _ = scalar_case()
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        lscjax.quant.dequantize({"Dense_0": {"kernel": BAD[bad](q)}})


@pytest.mark.parametrize(
    "make",
    [
        lambda: QArray(jnp.zeros((5, 4), jnp.uint8), jnp.zeros((3, 4, 2)), "product", 2, (5, 6)),
        lambda: QArray(jnp.zeros((2, 4, 4), jnp.uint8), jnp.zeros((3, 4)), "residual", 2, (4, 4)),
        lambda: QArray(jnp.zeros((4, 3), jnp.uint8), jnp.zeros((3, 2)), "binarize", 1, (4, 3)),
    ],
)
def test_inconsistent_layouts_raise_naming_the_leaf(make):
    with pytest.raises(ValueError, match="conv/kernel"):
        lscjax.quant.dequantize({"conv": {"kernel": make()}})
