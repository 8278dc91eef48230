"""Structured methods on hand-built cases: L1 filters, APoZ, channel LASSO, ThiNet, and the
per-input-channel view and activation collection they rely on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import prune
from lscjax._src.prune.channels import kernel_from_groups


def conv(x, k, strides=(1, 1), padding="VALID"):
    return jax.lax.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
@pytest.mark.parametrize("kernel_size", [(1, 1), (3, 3), (3, 2)])
def test_input_groups_conv_sums_to_the_conv(padding, strides, kernel_size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel_size, 3, 4)), jnp.float32)
    xg, wg = prune.input_groups(x, k, strides=strides, padding=padding)
    y = conv(x, k, strides, padding)
    assert xg.shape == (y.shape[0] * y.shape[1] * y.shape[2], 3, kernel_size[0] * kernel_size[1])
    np.testing.assert_allclose(
        np.einsum("mcg,cgo->mo", xg, wg), np.asarray(y).reshape(-1, 4), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(kernel_from_groups(wg, k.shape), k)


@pytest.mark.parametrize("channels", [None, 1, 5])
def test_input_groups_dense_channel_last_flatten(channels):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 20)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
    xg, wg = prune.input_groups(x, k, channels=channels)
    c = 20 if channels is None else channels
    assert xg.shape == (3, c, 20 // c)
    # channel j's features are j, j + C, j + 2C, ... (Flax flattens [H, W, C])
    np.testing.assert_array_equal(xg[:, 0, :], x[:, ::c])
    np.testing.assert_allclose(np.einsum("mcg,cgo->mo", xg, wg), x @ k, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(kernel_from_groups(wg, k.shape), k)


def test_input_groups_shape_errors():
    with pytest.raises(lscjax.LscError):
        prune.input_groups(jnp.ones((2, 20)), jnp.ones((20, 3)), channels=3)
    with pytest.raises(lscjax.LscError):
        prune.input_groups(jnp.ones((2, 5, 5, 2)), jnp.ones((3, 3, 4, 1)))


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (16, 8)])
def test_l1_filters_ranks_planted_weak_filters_last(shape):
    w = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    weak = [1, 5]
    w[..., weak] *= 0.01
    norms = np.asarray(prune.filter_norms(jnp.asarray(w)))
    np.testing.assert_allclose(norms, np.abs(w).reshape(-1, 8).sum(0), rtol=1e-5)
    assert set(np.argsort(norms)[:2]) == set(weak)
    masks = prune.l1_filters({"Conv_0": {"kernel": w}}, 0.25)
    np.testing.assert_array_equal(masks["Conv_0"], ~np.isin(np.arange(8), weak))
    masks = prune.l1_filters({"Conv_0": {"kernel": w}}, {"Conv_0/kernel": 0.5})
    assert masks["Conv_0"].sum() == 4 and not masks["Conv_0"][weak].any()


def planted_activations(fractions, shape=(10, 4, 4), seed=0):
    """Post-ReLU activations [*shape, C] whose channel c has exactly fractions[c] zeros."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    cols = []
    for f in fractions:
        col = rng.uniform(0.1, 1.0, n)
        col[: round(f * n)] = 0.0
        cols.append(rng.permutation(col))
    return np.stack(cols, axis=-1).reshape(*shape, len(fractions)).astype(np.float32)


def test_apoz_equals_zero_fraction_and_picks_dead_channels():
    fractions = np.array([0.3, 0.35, 0.4, 0.3, 0.45, 0.5, 0.4, 0.35, 1.0, 1.0])
    acts = planted_activations(fractions)
    np.testing.assert_allclose(np.asarray(prune.apoz_scores(acts)), fractions, atol=1e-7)
    masks = prune.apoz({"Conv_0": acts, "Dense_0": acts.reshape(-1, 10)})
    for layer in ("Conv_0", "Dense_0"):
        np.testing.assert_array_equal(masks[layer], fractions < 1.0)


def test_apoz_keeps_at_least_one_channel_and_num_std():
    acts = planted_activations([1.0, 1.0, 1.0])
    assert prune.apoz({"a": acts})["a"].sum() >= 1
    fractions = [0.1, 0.2, 0.3, 0.4]
    keep = prune.apoz({"a": planted_activations(fractions)}, num_std=0.0)["a"]
    np.testing.assert_array_equal(keep, np.array(fractions) <= np.mean(fractions))
    with pytest.raises(lscjax.LscError):
        prune.apoz({"a": acts}, num_std=-1.0)


def test_apoz_second_round_takes_statistics_over_kept_channels():
    """After a first round pruned the dead channels 8 and 9 (APoZ 1), the statistics come from
    channels 0-7 only: with num_std 0, the kept channels above their own mean go (by hand)."""
    fractions = np.array([0.3, 0.35, 0.4, 0.3, 0.45, 0.5, 0.4, 0.35, 1.0, 1.0])
    acts = planted_activations(fractions)
    kept = {"Conv_0": fractions < 1.0}
    keep = prune.apoz({"Conv_0": acts}, num_std=0.0, kept=kept)["Conv_0"]
    live_mean = fractions[:8].mean()  # 0.38125; over all ten channels it would be 0.505
    np.testing.assert_array_equal(keep, (fractions <= live_mean) & kept["Conv_0"])
    assert not keep[8:].any()  # pruned channels stay pruned
    with pytest.raises(lscjax.LscError, match="Conv_0"):
        prune.apoz({"Conv_0": acts}, kept={"Conv_0": np.zeros(10, bool)})


def planted_conv(seed=0):
    """Conv inputs [N, 6, 6, 8] and kernel [3, 3, 8, 5] where channels 6, 7 are redundant:
    their inputs copy channels 0, 1 and their weights are 0.05 times those of channels 0, 1
    (so their output is a small multiple of channels 0, 1's, absorbed by a refit)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6, 6, 8)).astype(np.float32)
    x[..., 6:8] = x[..., 0:2]
    k = rng.normal(size=(3, 3, 8, 5)).astype(np.float32)
    k[:, :, 6:8] = 0.05 * k[:, :, 0:2]
    return jnp.asarray(x), jnp.asarray(k)


def planted_dense(seed=0):
    """Flattened 2x2x6 maps [N, 24] and a kernel [24, 7]; channels 4, 5 copy 0, 1 (inputs, and
    weights times 0.05)."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(200, 2, 2, 6)).astype(np.float32)
    maps[..., 4:6] = maps[..., 0:2]
    k = rng.normal(size=(2, 2, 6, 7)).astype(np.float32)
    k[..., 4:6, :] = 0.05 * k[..., 0:2, :]
    return jnp.asarray(maps.reshape(200, 24)), jnp.asarray(k.reshape(24, 7))


def output_errors(x, k, selection, apply):
    """||Y - Y_refit||^2 and ||Y - Y_masked||^2 (masked: the original kernel on kept channels)."""
    y = apply(x, k)
    axis = 2 if k.ndim == 4 else None
    if axis is None:
        c = selection.mask.shape[0]
        keep_rows = np.tile(selection.mask, k.shape[0] // c)
        masked = jnp.where(jnp.asarray(keep_rows)[:, None], k, 0.0)
    else:
        masked = jnp.where(jnp.asarray(selection.mask)[:, None], k, 0.0)
    return (
        float(jnp.sum((y - apply(x, selection.kernel)) ** 2)),
        float(jnp.sum((y - apply(x, masked)) ** 2)),
    )


@pytest.mark.parametrize("method", [prune.channel_lasso, prune.thinet])
@pytest.mark.parametrize("layer", ["conv", "dense"])
def test_finds_planted_redundant_channels_and_refit_helps(method, layer):
    if layer == "conv":
        x, k = planted_conv()
        sel = method(x, k, 6)
        expected = np.arange(8) < 6
        err_refit, err_masked = output_errors(x, k, sel, conv)
    else:
        x, k = planted_dense()
        sel = method(x, k, 4, channels=6)
        expected = np.arange(6) < 4
        err_refit, err_masked = output_errors(x, k, sel, lambda x, k: x @ k)
    np.testing.assert_array_equal(sel.mask, expected)
    assert sel.kernel.shape == k.shape
    assert err_masked > 0
    assert err_refit < 0.5 * err_masked
    # the refit kernel is zero on pruned input channels
    pruned_part = (
        sel.kernel[:, :, ~expected] if layer == "conv" else sel.kernel[~np.tile(expected, 4)]
    )
    assert not np.any(np.asarray(pruned_part))


@pytest.mark.parametrize("method", [prune.channel_lasso, prune.thinet])
def test_refit_reconstructs_exactly(method):
    # the redundant channels' outputs are multiples of kept ones: the refit absorbs them
    x, k = planted_conv(seed=3)
    sel = method(x, k, 6, max_rows=None)
    y = conv(x, k)
    np.testing.assert_allclose(conv(x, sel.kernel), y, atol=2e-3 * float(jnp.abs(y).max()))


@pytest.mark.parametrize("method", [prune.channel_lasso, prune.thinet])
def test_bad_keep_count(method):
    x, k = planted_conv()
    for n_keep in (0, 9):
        with pytest.raises(lscjax.LscError, match="n_keep"):
            method(x, k, n_keep)


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(5)(x))
        return nn.Dense(3)(x)


def test_collect_activations_matches_capture_intermediates():
    model = Tiny()
    rng = np.random.default_rng(4)
    batches = [jnp.asarray(rng.normal(size=(3, 8, 8, 1)), jnp.float32) for _ in range(2)]
    variables = model.init(jax.random.key(0), batches[0])
    acts = prune.collect_activations(model, variables, batches, layers=["Conv_0", "Dense_1"])
    assert list(acts) == ["Conv_0", "Dense_1"]
    x = jnp.concatenate(batches)
    _, state = model.apply(variables, x, capture_intermediates=True)
    inter = state["intermediates"]
    np.testing.assert_array_equal(acts["Conv_0"].inputs, x)
    np.testing.assert_allclose(acts["Conv_0"].outputs, inter["Conv_0"]["__call__"][0], atol=1e-6)
    np.testing.assert_allclose(acts["Dense_1"].outputs, inter["Dense_1"]["__call__"][0], atol=1e-6)
    np.testing.assert_allclose(
        acts["Dense_1"].inputs, jax.nn.relu(inter["Dense_0"]["__call__"][0]), atol=1e-6
    )
    every = prune.collect_activations(model, variables, batches)
    assert set(every) == {"Conv_0", "Dense_0", "Dense_1"}
