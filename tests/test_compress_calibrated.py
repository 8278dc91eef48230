"""compress with calibration=: the "sparsegpt" / "wanda" recipes and distillation retraining."""

import dataclasses
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lscjax
from lscjax import LscError


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(8)(x)


@pytest.fixture(scope="module")
def mlp():
    model = Mlp()
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(32, 32)) * np.exp(rng.normal(size=32))[None, :]
    x = jnp.asarray(rng.normal(size=(512, 32)) @ mix, jnp.float32)  # correlated features
    params = model.init(jax.random.key(0), x)["params"]

    def apply_fn(p, b):
        return model.apply({"params": p}, b)

    cal = lscjax.Calibration(apply_fn, [x[:256], x[256:]])
    return apply_fn, params, x, cal


def output_error(apply_fn, params, model, x):
    return float(jnp.linalg.norm(apply_fn(params, x) - apply_fn(model.params(), x)))


def test_sparsegpt_recipe_beats_one_shot_magnitude(mlp):
    apply_fn, params, x, cal = mlp
    model = lscjax.compress(params, lscjax.recipe("sparsegpt", sparsity=0.5), calibration=cal)
    dense = model.params()
    for layer in ("Dense_0", "Dense_1", "Dense_2"):
        kernel = np.asarray(dense[layer]["kernel"])
        assert np.mean(kernel == 0) >= 0.5
        # 4-bit codes into one codebook per output channel (the recipe's default)
        assert max(len(np.unique(kernel[:, c])) for c in range(kernel.shape[1])) <= 16
    baseline = lscjax.compress(params, lscjax.Recipe("m", sparsity=0.5, bits=4))
    assert output_error(apply_fn, params, model, x) < 0.7 * output_error(
        apply_fn, params, baseline, x
    )


def test_per_channel_codebooks_in_the_sparsegpt_recipe(mlp):
    apply_fn, params, x, cal = mlp
    rc = lscjax.recipe("sparsegpt", sparsity=0.5)
    assert rc.per_channel
    layer = lscjax.compress(params, dataclasses.replace(rc, per_channel=False), calibration=cal)
    channel = lscjax.compress(params, rc, calibration=cal)
    assert channel.meta["recipe"]["per_channel"] is True
    dense = channel.params()
    for name, n in (("Dense_0", 64), ("Dense_1", 64), ("Dense_2", 8)):
        q = channel.encoded[f"{name}/kernel"].quantized
        assert q.codebook.shape == (n, 16) and np.all(q.codebook[:, 0] == 0)
        kernel = np.asarray(dense[name]["kernel"])
        assert np.mean(kernel == 0) >= 0.5
        assert max(len(np.unique(kernel[:, c])) for c in range(n)) <= 16
    assert output_error(apply_fn, params, channel, x) < output_error(apply_fn, params, layer, x)
    ruled = dataclasses.replace(rc, rules=[{"pattern": "Dense_2", "per_channel": False}])
    mixed = lscjax.compress(params, ruled, calibration=cal)
    assert mixed.encoded["Dense_1/kernel"].quantized.codebook.shape == (64, 16)
    assert mixed.encoded["Dense_2/kernel"].quantized.codebook.shape == (16,)
    assert mixed.meta["recipe"]["rules"] == [{"pattern": "Dense_2", "per_channel": False}]
    with pytest.raises(LscError, match="per_channel"):
        lscjax.Recipe("r", sparsity=0.0, quant="rdq", target_bits=2.0, per_channel=True)


def test_recipe_init_is_the_k_means_init(mlp):
    _, params, _, cal = mlp
    rc = lscjax.Recipe("r", sparsity=0.0, bits=3, init="density")
    got = lscjax.compress(params, rc).encoded["Dense_1/kernel"].quantized
    want = lscjax.quant.kmeans(params, 3, init="density")["Dense_1"]["kernel"]
    np.testing.assert_array_equal(got.codebook, want.codebook)
    linear = lscjax.quant.kmeans(params, 3)["Dense_1"]["kernel"]
    assert not np.array_equal(got.codebook, linear.codebook)
    calibrated = lscjax.compress(
        params, lscjax.recipe("sparsegpt", init="density"), calibration=cal
    )
    assert calibrated.meta["recipe"]["init"] == "density"
    with pytest.raises(LscError, match="init"):
        lscjax.Recipe("r", sparsity=0.0, init="uniform")
    with pytest.raises(LscError, match="init"):
        lscjax.Recipe("r", sparsity=0.0, quant="rdq", target_bits=2.0, init="density")


def test_wanda_recipe_with_a_pattern_is_exact(mlp):
    _, params, _, cal = mlp
    model = lscjax.compress(params, lscjax.recipe("wanda", pattern="2:4"), calibration=cal)
    kernel = np.asarray(model.params()["Dense_1"]["kernel"])
    assert np.all((kernel.reshape(16, 4, 64) != 0).sum(axis=1) <= 2)
    assert model.meta["recipe"]["prune"] == "wanda"


def test_calibrated_recipes_need_calibration(mlp):
    _, params, _, _ = mlp
    with pytest.raises(LscError, match="calibration"):
        lscjax.compress(params, "sparsegpt")
    with pytest.raises(LscError, match="pattern"):
        lscjax.compress(params, lscjax.Recipe("m", sparsity=0.5, pattern="2:4"))


def test_distillation_retrains_towards_the_dense_outputs_keeping_masks(mlp):
    apply_fn, params, x, cal = mlp
    recipe = lscjax.recipe("sparsegpt", sparsity=0.8, bits=3)
    one_shot = lscjax.compress(params, recipe, calibration=cal)
    hook = lscjax.distillation(
        apply_fn, params, [x[:128], x[128:256]], 60, optimizer=optax.adam(1e-3)
    )
    tuned = lscjax.compress(params, recipe, calibration=cal, retrain=hook)
    kernels = tuned.params()
    for layer in ("Dense_0", "Dense_1", "Dense_2"):
        kernel = np.asarray(kernels[layer]["kernel"])
        assert np.mean(kernel == 0) >= 0.79  # 80% per lazy batch of 32 rows, rounded
        assert max(len(np.unique(kernel[:, c])) for c in range(kernel.shape[1])) <= 8
    assert output_error(apply_fn, params, tuned, x) < output_error(apply_fn, params, one_shot, x)
    with pytest.raises(LscError, match="steps"):
        lscjax.distillation(apply_fn, params, [x], 0)


def test_one_shot_magnitude_past_half_without_data_warns(mlp):
    _, params, _, _ = mlp
    with pytest.warns(UserWarning, match="one shot"):
        lscjax.compress(params, lscjax.recipe("lsc", bits=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lscjax.compress(params, lscjax.recipe("lsc", sparsity=0.5, bits=4))
