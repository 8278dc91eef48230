"""project_topk: the ADMM Z-step projection onto at most k non-zeros."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax.prune import project_topk


@st.composite
def weights_and_k(draw):
    shape = draw(st.sampled_from([(7,), (4, 5), (3, 3, 2, 4)]))
    n = int(np.prod(shape))
    seed = draw(st.integers(0, 2**31 - 1))
    # distinct magnitudes, random signs: the k largest are unambiguous
    mags = np.random.default_rng(seed).permutation(n).astype(np.float32) + 1.0
    signs = np.where(np.random.default_rng(seed + 1).random(n) < 0.5, -1.0, 1.0)
    return (mags * signs).reshape(shape).astype(np.float32), draw(st.integers(0, n))


@settings(max_examples=15)
@given(weights_and_k())
def test_keeps_exactly_the_k_largest(case):
    w, k = case
    z = np.asarray(project_topk(jnp.asarray(w), k))
    kept = z != 0
    assert kept.sum() == k
    np.testing.assert_array_equal(z[kept], w[kept])  # kept entries unchanged
    if 0 < k < w.size:
        assert np.abs(w[kept]).min() > np.abs(w[~kept]).max()


@settings(max_examples=15)
@given(weights_and_k())
def test_idempotent(case):
    w, k = case
    once = project_topk(jnp.asarray(w), k)
    np.testing.assert_array_equal(np.asarray(project_topk(once, k)), np.asarray(once))


def test_ties_keep_lower_index():
    z = project_topk(jnp.array([1.0, -2.0, 2.0, 2.0]), 2)
    np.testing.assert_array_equal(np.asarray(z), [0.0, -2.0, 2.0, 0.0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_under_jit_no_retrace(dtype):
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(w):
        return project_topk(w, 3)

    rng = np.random.default_rng(0)
    for _ in range(3):
        w = jnp.asarray(rng.normal(size=(4, 4)), dtype)
        z = step(w)
        assert z.dtype == dtype
        np.testing.assert_array_equal(np.asarray(z != 0).sum(), 3)


@pytest.mark.parametrize("k", [-1, 17, 2.0])
def test_bad_k(k):
    with pytest.raises(lscjax.LscError, match="k must be"):
        project_topk(jnp.zeros((4, 4)), k)
