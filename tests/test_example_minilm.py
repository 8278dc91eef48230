"""The pure helpers of examples/compress_minilm.py against hand computations."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "examples" / "compress_minilm.py"
spec = importlib.util.spec_from_file_location("compress_minilm", PATH)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)


def test_ranks_average_ties():
    np.testing.assert_array_equal(example.ranks(np.array([10, 20, 20, 5])), [2, 3.5, 3.5, 1])
    np.testing.assert_array_equal(example.ranks(np.array([7, 7, 7])), [2, 2, 2])


def test_spearman_by_hand():
    # ranks of b: 1, 2, 3.5, 5, 3.5; centred ranks a (-2, -1, 0, 1, 2), b (-2, -1, .5, 2, .5):
    # sum of products 8, sums of squares 10 and 9.5 -> 8 / sqrt(95).
    a, b = np.array([1.0, 2, 3, 4, 5]), np.array([5.0, 6, 7, 8, 7])
    assert example.spearman(a, b) == pytest.approx(8 / np.sqrt(95), abs=1e-12)
    assert example.spearman(a, np.exp(a)) == pytest.approx(1.0)
    assert example.spearman(a, -(a**3)) == pytest.approx(-1.0)


def test_spearman_matches_the_no_ties_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
    n = len(a)
    assert example.spearman(a, b) == pytest.approx(1 - 6 * np.sum(d**2) / (n * (n * n - 1)))


def test_top_k_overlap_by_hand():
    sim_a = np.array(
        [[1.0, 0.9, 0.5, 0.1], [0.9, 1.0, 0.2, 0.3], [0.5, 0.2, 1.0, 0.8], [0.1, 0.3, 0.8, 1.0]]
    )
    np.testing.assert_array_equal(example.top_k(sim_a, 2), [[1, 2], [0, 3], [3, 0], [2, 1]])
    sim_b = sim_a.copy()
    sim_b[0, 3] = sim_b[3, 0] = 0.95  # row 0: {3, 1}; row 3: {0, 2}; rows 1 and 2 unchanged
    # Overlaps: row 0 {1,2} vs {3,1}: 1/2; row 1: 2/2; row 2: 2/2; row 3 {2,1} vs {0,2}: 1/2.
    assert example.top_k_overlap(sim_a, sim_b, 2) == pytest.approx(0.75)
    assert example.top_k_overlap(sim_a, sim_a, 3) == 1.0


def test_fidelity_of_a_rotation_in_a_plane():
    # Unit vectors turned by 0.1 rad: every cosine is cos(0.1), and the pairwise similarities
    # (hence their ranks and every neighbour) are unchanged.
    theta = np.random.default_rng(0).uniform(0, 6, size=8)  # pairwise angles all different
    dense = np.stack([np.cos(theta), np.sin(theta)], 1)
    served = np.stack([np.cos(theta + 0.1), np.sin(theta + 0.1)], 1)
    table = example.fidelity(dense, served)
    assert table["mean cosine"] == pytest.approx(np.cos(0.1))
    assert table["min cosine"] == pytest.approx(np.cos(0.1))
    assert table["Spearman of pairwise similarities"] == pytest.approx(1.0)
    assert table["top-5 neighbour overlap"] == 1.0
    # The rows in reverse order: each row's neighbour set changes, which the overlap must see.
    assert example.fidelity(dense, served[::-1])["top-5 neighbour overlap"] < 1.0


def test_batches_pad_with_empty_rows():
    ids = np.arange(10, dtype=np.int32).reshape(5, 2)
    mask = np.ones((5, 2), np.int32)
    chunks = example.batches(ids, mask, 2)
    assert len(chunks) == 3
    np.testing.assert_array_equal(chunks[2][0], [[8, 9], [0, 0]])
    np.testing.assert_array_equal(chunks[2][1], [[1, 1], [0, 0]])


def test_selection():
    assert example.is_compressed("encoder/layer/0/attention/self/query/kernel", None)
    assert example.is_compressed("embeddings/word_embeddings/embedding", None)
    assert not example.is_compressed("encoder/layer/0/attention/self/query/bias", None)
    assert not example.is_compressed("embeddings/token_type_embeddings/embedding", None)


def test_top_k_refuses_k_past_the_rows():
    with pytest.raises(ValueError, match="k must be in"):
        example.top_k(np.eye(4), 4)
