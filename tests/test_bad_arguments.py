"""Public functions refuse bad arguments with an error naming the argument or the leaf path, and
legal edge cases (empty batches, zero-size kernels) work."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import LscError, prune, quant, sparse, train


@pytest.fixture(scope="module")
def kernel():
    k = np.zeros((16, 8), np.float32)
    k[:4, :4] = np.arange(16, dtype=np.float32).reshape(4, 4) + 1
    return k


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_matmul_of_an_empty_batch(kernel, lead):
    w = sparse.BlockSparse.from_dense(kernel, block=(4, 4))
    x = jnp.zeros((*lead, 16))
    for fn in (sparse.matmul, jax.jit(sparse.matmul)):
        y = fn(x, w)
        assert y.shape == (*lead, 8) and y.dtype == jnp.float32


@pytest.mark.parametrize("shape", [(0, 8), (16, 0), (0, 0)])
def test_to_block_sparse_of_an_empty_kernel(shape):
    params = {"Dense_0": {"kernel": np.zeros(shape, np.float32)}}
    w = lscjax.flax.to_block_sparse(params)["Dense_0"]["kernel"]
    assert w.block_density == 0.0
    assert np.asarray(w.todense()).shape == shape
    x = jnp.ones((3, shape[0]))
    np.testing.assert_array_equal(np.asarray(sparse.matmul(x, w)), np.zeros((3, shape[1])))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"strides": 0}, "strides"),
        ({"strides": (1, -1)}, "strides"),
        ({"kernel_dilation": 0}, "kernel_dilation"),
        ({"input_dilation": (0, 1), "padding": ((0, 0), (0, 0))}, "input_dilation"),
    ],
)
def test_conv_refuses_non_positive_strides(kwargs, name):
    k = np.ones((3, 3, 4, 8), np.float32)
    w = sparse.BlockSparse.from_dense(k, block=(4, 4))
    with pytest.raises(LscError, match=f"{name} must be positive ints"):
        sparse.conv(jnp.ones((1, 6, 6, 4)), w, **kwargs)


PARAMS = {"a": {"kernel": jnp.ones((4, 16))}, "b": {"kernel": jnp.ones((16, 2))}}
MISSING = {"a": {"kernel": jnp.ones((4, 16), bool)}}
EXTRA = {**MISSING, "b": {"kernel": None}, "c": {"kernel": jnp.ones(2, bool)}}


@pytest.mark.parametrize(
    "masks, match", [(MISSING, r"missing \['b/kernel'\]"), (EXTRA, "c/kernel")]
)
def test_masks_trees_that_do_not_match(masks, match):
    with pytest.raises(LscError, match=match):
        prune.apply(PARAMS, masks)
    with pytest.raises(LscError, match=match):
        train.keep_masks(optax.sgd(0.1), masks).init(PARAMS)


def test_keep_masks_refuses_a_mask_that_would_broadcast():
    masks = {"a": {"kernel": jnp.ones((1, 16), bool)}, "b": {"kernel": None}}
    with pytest.raises(LscError, match=r"'a/kernel' has shape \(1, 16\), the leaf \(4, 16\)"):
        train.keep_masks(optax.sgd(0.1), masks).init(PARAMS)
    good = {"a": {"kernel": jnp.arange(64).reshape(4, 16) % 2 == 0}, "b": {"kernel": None}}
    tx = train.keep_masks(optax.sgd(1.0), good)
    updates, _ = tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(
        np.asarray(updates["a"]["kernel"]), -np.asarray(good["a"]["kernel"], np.float32)
    )


@pytest.mark.parametrize("array", [np.asarray, jnp.asarray])
def test_dequantize_codes_past_the_codebook(array):
    q = quant.QArray(
        array(np.array([0, 1, 3], np.uint8)), array(np.float32([0, 1, 2])), "kmeans", 2, (3,)
    )
    with pytest.raises(LscError, match="'w': code 3 past the 3 codebook entries"):
        quant.dequantize({"w": q})
    with pytest.raises(LscError, match="code 3 past"):
        q.dequantize()
    ok = quant.QArray(q.codes % 3, q.codebook, "kmeans", 2, (3,))
    np.testing.assert_array_equal(np.asarray(ok.dequantize()), [0.0, 1.0, 0.0])


def test_decode_and_save_refuse_the_wrong_type(tmp_path):
    with pytest.raises(TypeError, match="Encoded.from_bytes"):
        lscjax.coding.decode(b"LC\x01\x00\x00\x00")
    with pytest.raises(TypeError, match="CompressedModel"):
        lscjax.save(tmp_path / "m.lsc", {"w": np.ones(3)})


def test_save_refuses_paths_that_do_not_nest(tmp_path):
    model = lscjax.CompressedModel({}, {"a": np.ones(2, np.float32), "a/b": np.ones(2, np.float32)})
    with pytest.raises(LscError, match="do not form a tree"):
        lscjax.save(tmp_path / "m.lsc", model)
    assert not (tmp_path / "m.lsc").exists()


def test_save_refuses_a_raw_leaf_of_17_axes(tmp_path):
    model = lscjax.CompressedModel({}, {"w": np.ones((1,) * 17, np.float32)})
    with pytest.raises(LscError, match="17 axes"):
        lscjax.save(tmp_path / "m.lsc", model)


@pytest.mark.parametrize("bits", [-1, 17, 2.5, True])
def test_compress_refuses_bad_bits(bits):
    params = {"Dense_0": {"kernel": np.ones((8, 8), np.float32)}}
    with pytest.raises(LscError, match=r"bits must be an int in \[0, 16\]"):
        lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.5, bits=bits))


@pytest.mark.parametrize("rho", [-1, -1e-9, float("inf"), float("nan"), "1", None])
def test_admm_refuses_bad_rho(rho):
    with pytest.raises(LscError, match="rho must be"):
        train.admm(optax.sgd(0.1), 0.5, rho=rho, every=10)
    train.admm(optax.sgd(0.1), 0.5, rho=lambda count: 1e-3, every=10)  # a schedule is fine


def test_erk_with_a_zero_size_layer():
    out = prune.erk_sparsities({"empty": (0, 4), "a": (8, 8), "b": (8, 8)}, 0.5)
    assert out["empty"] == 0.0
    assert out["a"] == pytest.approx(0.5) and out["b"] == pytest.approx(0.5)  # equal shapes
    assert not any(np.isnan(v) for v in out.values())


def test_apoz_refuses_an_array():
    with pytest.raises(TypeError, match="activations must be a mapping"):
        prune.apoz(jnp.ones((4, 4)))
