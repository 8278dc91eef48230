"""lscjax.Calibration: Gram matrices equal X^T X of the captured layer inputs (Linen and NNX),
Conv rows are the patches that reproduce the conv, layer-sequential stats see earlier changes."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import lscjax
from lscjax import LscError


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.DenseGeneral(12, axis=-1)(x))
        return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def linen():
    net = Net()
    x = jax.random.normal(jax.random.key(0), (12, 8, 8, 2))
    params = net.init(jax.random.key(1), x)["params"]
    cal = lscjax.Calibration(lambda p, b: net.apply({"params": p}, b), [x[:5], x[5:]])
    return net, params, x, cal


def test_linen_gram_equals_xtx_of_captured_inputs(linen):
    net, params, x, cal = linen
    stats = cal.stats(params)
    assert list(stats) == ["Conv_0/kernel", "DenseGeneral_0/kernel", "Dense_0/kernel"]
    acts = lscjax.prune.collect_activations(net, {"params": params}, [x[:5], x[5:]])
    for layer in ("DenseGeneral_0", "Dense_0"):
        xs = np.asarray(acts[layer].inputs, np.float64).reshape(-1, acts[layer].inputs.shape[-1])
        s = stats[f"{layer}/kernel"]
        np.testing.assert_allclose(s.gram, xs.T @ xs, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(s.norms, np.sqrt((xs * xs).sum(0)), rtol=1e-4)
        assert s.count == 12
    # the Conv's rows are its patches: rows @ kernel.reshape(-1, out) is the conv's output
    conv = nn.Conv(4, (3, 3), strides=2, padding="SAME")
    from lscjax._src.flax.calibration import layer_rows

    kernel = params["Conv_0"]["kernel"]
    rows = np.asarray(layer_rows(conv, x), np.float64)
    want = np.asarray(acts["Conv_0"].outputs) - np.asarray(params["Conv_0"]["bias"])
    np.testing.assert_allclose(
        rows @ np.asarray(kernel).reshape(-1, 4), want.reshape(-1, 4), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(stats["Conv_0/kernel"].gram, rows.T @ rows, rtol=1e-4, atol=1e-3)
    assert stats["Conv_0/kernel"].count == 12 * 16


def test_sequential_stats_come_from_the_compressed_earlier_layers(linen):
    _, params, _, cal = linen
    seen = {}

    def compress_layer(p, one):
        (path,) = one
        seen[path] = one[path]
        return lscjax.prune.sparsegpt(p, one, 0.5)[0]

    final = cal.sequential(params, compress_layer)
    first = lscjax.prune.sparsegpt(params, {"Conv_0/kernel": seen["Conv_0/kernel"]}, 0.5)[0]
    want = cal.stats(first, where=lambda p, _: p == "DenseGeneral_0/kernel")
    np.testing.assert_allclose(
        seen["DenseGeneral_0/kernel"].gram, want["DenseGeneral_0/kernel"].gram, rtol=1e-5
    )
    assert not np.allclose(
        seen["DenseGeneral_0/kernel"].gram,
        cal.stats(params)["DenseGeneral_0/kernel"].gram,
        rtol=1e-3,
    )
    assert all(v == 0.5 for v in lscjax.prune.sparsity(final).values())


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(6, 8, rngs=rngs)
        self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.b(nnx.relu(self.a(x)))


def test_nnx_gram_equals_xtx_of_the_inputs():
    graphdef, state = nnx.split(NnxNet(nnx.Rngs(0)), nnx.Param)
    x = jax.random.normal(jax.random.key(2), (10, 6))
    cal = lscjax.Calibration(lambda s, b: nnx.merge(graphdef, s)(b), [x], num_batches=1)
    stats = cal.stats(state)
    assert list(stats) == ["a/kernel/value", "b/kernel/value"]
    h = np.maximum(
        np.asarray(x) @ np.asarray(state["a"]["kernel"][...]) + np.asarray(state["a"]["bias"][...]),
        0,
    )
    np.testing.assert_allclose(
        stats["a/kernel/value"].gram, np.asarray(x).T @ np.asarray(x), rtol=1e-5
    )
    np.testing.assert_allclose(stats["b/kernel/value"].gram, h.T @ h, rtol=1e-4, atol=1e-4)


def test_bad_calibration_input_is_refused(linen):
    net, params, x, _ = linen
    with pytest.raises(LscError, match="no batch"):
        lscjax.Calibration(lambda p, b: b, [])
    with pytest.raises(LscError, match="num_batches"):
        lscjax.Calibration(lambda p, b: b, [x], num_batches=0)
    cal = lscjax.Calibration(lambda p, b: net.apply({"params": p}, b), [x])
    with pytest.raises(LscError, match="no selected kernel"):
        cal.stats(params, where=lambda p, _: p.endswith("bias"))


class Tokens(nn.Module):
    """Two Dense layers on the same input [B, T, F] (as query and key), then one on their sum."""

    @nn.compact
    def __call__(self, x):
        q, k = nn.Dense(5, name="q")(x), nn.Dense(5, name="k")(x)
        return nn.Dense(2, name="out")(nn.relu(q + k))


@pytest.fixture(scope="module")
def tokens():
    net = Tokens()
    x = jax.random.normal(jax.random.key(3), (6, 4, 3))
    mask = np.array(jax.random.bernoulli(jax.random.key(4), 0.6, (6, 4)))
    params = net.init(jax.random.key(5), x)["params"]
    batches = [(x[:3], mask[:3]), (x[3:], mask[3:])]
    return net, params, x, mask, batches


def test_row_mask_leaves_the_masked_rows_out(tokens):
    net, params, x, mask, batches = tokens
    cal = lscjax.Calibration(
        lambda p, b: net.apply({"params": p}, b[0]), batches, row_mask=lambda b: b[1]
    )
    stats = cal.stats(params)
    kept = np.asarray(x, np.float64)[mask]  # the rows of the unmasked tokens, [N, 3]
    s = stats["q/kernel"]
    np.testing.assert_allclose(s.gram, kept.T @ kept, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.norms, np.sqrt((kept**2).sum(0)), rtol=1e-4)
    assert s.count == int(mask.sum()) < mask.size
    # a per-example mask [B] is broadcast over the tokens
    one = lscjax.Calibration(
        lambda p, b: net.apply({"params": p}, b[0]),
        [(x, np.array([1, 0, 1, 1, 0, 1]))],
        row_mask=lambda b: b[1],
    )
    rows = np.asarray(x, np.float64)[[0, 2, 3, 5]].reshape(-1, 3)
    np.testing.assert_allclose(one.stats(params)["k/kernel"].gram, rows.T @ rows, rtol=1e-4)
    bad = lscjax.Calibration(
        lambda p, b: net.apply({"params": p}, b[0]), batches, row_mask=lambda b: b[1][:, :2]
    )
    with pytest.raises(LscError, match="row_mask of shape .* 'q/kernel'"):
        bad.stats(params)
    with pytest.raises(LscError, match="row_mask"):
        lscjax.Calibration(lambda p, b: b, batches, row_mask=3)


def test_sequential_equals_one_layer_at_a_time(tokens):
    """Layers on one shared input share a stats run; the result is the strict protocol's."""
    net, params, _, _, batches = tokens
    cal = lscjax.Calibration(lambda p, b: net.apply({"params": p}, b[0]), batches)

    def compress_layer(p, one):
        return lscjax.prune.sparsegpt(p, one, 0.4)[0]

    got = cal.sequential(params, compress_layer)
    want = params
    for path in ("q/kernel", "k/kernel", "out/kernel"):
        want = compress_layer(want, cal.stats(want, where=lambda p, _, q=path: p == q))
    for layer in ("q", "k", "out"):
        np.testing.assert_allclose(got[layer]["kernel"], want[layer]["kernel"], rtol=1e-6)
    assert (("q/kernel", "k/kernel"), False) in cal._runs  # one stats run for both


def test_sequential_cross_pairs_the_compressed_and_dense_inputs(tokens):
    """cross = X^T X_dense on the unmasked rows: X the out layer's input after q and k were
    pruned, X_dense its input in the dense model, both computed here by hand."""
    net, params, x, mask, batches = tokens
    cal = lscjax.Calibration(
        lambda p, b: net.apply({"params": p}, b[0]), batches, row_mask=lambda b: b[1]
    )
    seen = {}

    def compress_layer(p, one):
        ((path, s),) = one.items()
        seen[path] = s
        layer = path.split("/")[0]
        return {**p, layer: {**p[layer], "kernel": p[layer]["kernel"] * 0.5}}

    final = cal.sequential(params, compress_layer, cross=True)

    def hidden(p):
        xs = np.asarray(x, np.float64)
        q = xs @ np.asarray(p["q"]["kernel"], np.float64) + np.asarray(p["q"]["bias"])
        k = xs @ np.asarray(p["k"]["kernel"], np.float64) + np.asarray(p["k"]["bias"])
        return np.maximum(q + k, 0.0)[mask]  # [N, 5], the unmasked tokens

    h, h_dense = hidden(final), hidden(params)
    s = seen["out/kernel"]
    np.testing.assert_allclose(s.gram, h.T @ h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.cross, h.T @ h_dense, rtol=1e-4, atol=1e-5)
    assert not np.allclose(s.cross, s.gram, rtol=1e-2)
    kept = np.asarray(x, np.float64)[mask]  # q and k: nothing before them changed
    np.testing.assert_allclose(seen["q/kernel"].cross, kept.T @ kept, rtol=1e-4, atol=1e-5)
    assert cal.stats(params)["q/kernel"].cross is None
