"""block_magnitude and n_of_m against per-block / per-group NumPy oracles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lscjax
from lscjax.prune import block_magnitude, n_of_m

REDUCE = {
    "l2": lambda t: np.sqrt(np.sum(t * t)),
    "l1": lambda t: np.sum(np.abs(t)),
    "max": lambda t: np.max(np.abs(t)),
}


def block_oracle(w, block, reduce):
    """Scores of each tile of the matrix view, by explicit slicing (zero padding is a no-op)."""
    mat = np.abs(w.reshape(-1, w.shape[-1]))
    b0, b1 = block
    rows, cols = -(-mat.shape[0] // b0), -(-mat.shape[1] // b1)
    return np.array(
        [
            [REDUCE[reduce](mat[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]) for j in range(cols)]
            for i in range(rows)
        ]
    )


@pytest.mark.parametrize("shape", [(8, 8), (10, 6), (3, 3, 4, 8)])
@pytest.mark.parametrize("block", [(2, 2), (4, 4), (2, 4)])
@pytest.mark.parametrize("reduce", ["l2", "l1", "max"])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_block_magnitude_matches_oracle(shape, block, reduce, sparsity):
    w = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    mask = np.asarray(
        block_magnitude({"kernel": w}, sparsity, block=block, reduce=reduce)["kernel"]
    )
    assert mask.shape == shape and mask.dtype == bool
    scores = block_oracle(w, block, reduce)
    b0, b1 = block
    mat = mask.reshape(-1, shape[-1])
    kept_blocks = np.zeros(scores.shape, bool)
    for i in range(scores.shape[0]):
        for j in range(scores.shape[1]):
            tile = mat[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]
            assert tile.all() or not tile.any()  # constant on each block
            kept_blocks[i, j] = tile.all()
    assert kept_blocks.sum() == round(scores.size * (1 - sparsity))
    if 0 < kept_blocks.sum() < scores.size:
        assert scores[kept_blocks].min() >= scores[~kept_blocks].max()


@pytest.mark.parametrize("shape, block", [((64, 48), (8, 8)), ((3, 3, 8, 20), (4, 4))])
@pytest.mark.parametrize("sparsity", [0.0, 0.7])
def test_balanced_blocks_keep_each_columns_best(shape, block, sparsity):
    """Each output block column keeps its own top round(C * (1 - s)) blocks: equal ELL rows."""
    w = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    mask = np.asarray(
        block_magnitude({"kernel": w}, sparsity, block=block, balanced=True)["kernel"]
    )
    scores = block_oracle(w, block, "l2")
    b0, b1 = block
    kept = mask.reshape(-1, shape[-1])[::b0, ::b1]  # constant on blocks (checked above)
    per_column = round(scores.shape[0] * (1 - sparsity))
    for j in range(scores.shape[1]):
        best = np.argsort(-scores[:, j], kind="stable")[:per_column]
        np.testing.assert_array_equal(np.flatnonzero(kept[:, j]), np.sort(best))
    sparse = lscjax.sparse.BlockSparse.from_dense(np.where(mask, w, 0), block)
    assert set(np.asarray(sparse.counts).tolist()) == {per_column} and sparse.kmax == max(
        1, per_column
    )


def test_block_magnitude_planted_blocks():
    w = np.full((8, 8), 0.01, np.float32)
    w[0:4, 4:8] = 1.0
    w[4:8, 0:4] = -2.0
    mask = np.asarray(block_magnitude({"kernel": w}, 0.5, block=(4, 4))["kernel"])
    expected = np.zeros((8, 8), bool)
    expected[0:4, 4:8] = expected[4:8, 0:4] = True
    np.testing.assert_array_equal(mask, expected)


@st.composite
def nm_case(draw):
    m = draw(st.sampled_from([2, 4, 8]))
    n = draw(st.integers(0, m))
    groups = draw(st.integers(1, 3))
    other = draw(st.integers(1, 5))
    axis = draw(st.sampled_from([0, 1, -2]))
    shape = [other, other + 1, 3]
    shape[axis] = groups * m
    seed = draw(st.integers(0, 2**31 - 1))
    return n, m, axis, np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=15)
@given(nm_case())
def test_n_of_m_exactly_n_of_every_m_largest(case):
    n, m, axis, w = case
    mask = np.asarray(n_of_m({"kernel": w}, n, m, axis=axis)["kernel"])
    assert mask.shape == w.shape
    g_mask = np.moveaxis(mask, axis, -1).reshape(-1, m)
    g_w = np.abs(np.moveaxis(w, axis, -1).reshape(-1, m))
    np.testing.assert_array_equal(g_mask.sum(axis=1), n)
    expected = np.argsort(np.argsort(-g_w, axis=1, kind="stable"), axis=1, kind="stable") < n
    np.testing.assert_array_equal(g_mask, expected)


def test_n_of_m_default_axis_is_the_input_axis_and_jit():
    params = {"Dense_0": {"kernel": jnp.arange(32.0).reshape(8, 4), "bias": jnp.ones(4)}}
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def two_of_four(p):
        return n_of_m(p, 2, 4)

    masks = two_of_four(params)
    two_of_four(jax.tree_util.tree_map(lambda x: x + 1.0, params))  # no retrace
    assert masks["Dense_0"]["bias"] is None
    # along axis 0 (inputs) the two larger of each 4 rows are the later ones
    expected = np.tile(np.array([0, 0, 1, 1], bool)[:, None], (2, 4))
    np.testing.assert_array_equal(np.asarray(masks["Dense_0"]["kernel"]), expected)


def test_n_of_m_bad_length_names_the_path():
    with pytest.raises(lscjax.LscError, match="Conv_0/kernel"):
        n_of_m({"Conv_0": {"kernel": jnp.ones((5, 5, 1, 20))}}, 2, 4)


@pytest.mark.parametrize(
    "kwargs", [dict(block=(0, 4)), dict(block=4), dict(reduce="mean"), dict(sparsity=1.0)]
)
def test_block_bad_config(kwargs):
    kwargs = {"sparsity": 0.5, **kwargs}
    with pytest.raises(lscjax.LscError):
        block_magnitude({"kernel": jnp.ones((4, 4))}, **kwargs)


def test_block_rejects_vectors_by_path():
    with pytest.raises(lscjax.LscError, match="'b'"):
        block_magnitude({"b": jnp.ones(4)}, 0.5, where=lambda *_: True)


def test_balanced_90_percent_keeps_one_block_per_column_of_small_layers():
    """A small CNN at 90%, blocks of 32: layers of <= 5 row blocks would keep round(n * 0.1) = 0
    blocks and compute nothing; each output block column keeps its best block instead."""
    shapes = {"conv": (3, 3, 16, 64), "fc1": (160, 64), "fc2": (64, 10), "big": (640, 64)}
    rng = np.random.default_rng(0)
    params = {name: {"kernel": rng.normal(size=s).astype(np.float32)} for name, s in shapes.items()}
    masks = block_magnitude(params, 0.9, block=(32, 32), balanced=True)
    for name, shape in shapes.items():
        scores = block_oracle(params[name]["kernel"], (32, 32), "l2")
        kept = np.asarray(masks[name]["kernel"]).reshape(-1, shape[-1])[::32, ::32]
        per_column = max(1, round(scores.shape[0] * 0.1))
        for j in range(scores.shape[1]):
            best = np.argsort(-scores[:, j], kind="stable")[:per_column]
            np.testing.assert_array_equal(np.flatnonzero(kept[:, j]), np.sort(best), name)
    assert round(scores.shape[0] * 0.1) == 2  # "big" (20 row blocks) keeps its rounding
    reached = lscjax.prune.sparsity(masks)
    assert reached["fc1/kernel"] == 0.8 and reached["big/kernel"] == 0.9  # 1 of 5, 2 of 20


def test_unbalanced_keeps_at_least_one_block_per_leaf():
    w = np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)  # 2 x 1 blocks of 8
    mask = np.asarray(block_magnitude({"kernel": w}, 0.9, block=(8, 8))["kernel"])
    scores = block_oracle(w, (8, 8), "l2")
    assert mask.sum() == 64 and mask.reshape(2, 8, 8)[scores[:, 0].argmax()].all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("balanced", [False, True])
def test_low_precision_ties_keep_exactly_k_blocks(dtype, balanced):
    """bf16 / f16 weights whose blocks all score the same: ties must not change the count."""
    w = jnp.ones((32, 16), dtype)  # 8 x 4 blocks of 4, every l2 score 4.0
    mask = np.asarray(
        block_magnitude({"kernel": w}, 0.75, block=(4, 4), balanced=balanced)["kernel"]
    )
    kept = mask[::4, ::4]
    if balanced:
        assert (kept.sum(axis=0) == 2).all()
    else:
        assert kept.sum() == 8
    assert kept[:2].all()  # ties keep the lowest flat indices: the first two block rows
