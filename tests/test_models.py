"""The LeNets have the papers' weight counts and the shared loop learns."""

import jax
import numpy as np
import optax
import pytest

import lscjax
from lscjax.models import LeNet5, LeNet300


@pytest.mark.parametrize(
    "model, weights, biases", [(LeNet300(), 266_200, 410), (LeNet5(), 430_500, 580)]
)
def test_weight_counts(model, weights, biases):
    params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
    sizes = {p: n for p, (_, n) in lscjax.prune.count_params(params, where=lambda *_: True).items()}
    assert sum(n for p, n in sizes.items() if p.endswith("kernel")) == weights
    assert sum(n for p, n in sizes.items() if p.endswith("bias")) == biases


def test_init_is_linen_init_and_apply():
    model = LeNet5()
    params, apply_fn = lscjax.models.init(model, seed=3)
    want = model.init(jax.random.key(3), np.zeros((1, 28, 28, 1), np.float32))["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_array_equal(apply_fn(params, x), model.apply({"params": want}, x))


@pytest.mark.slow
def test_fit_learns_and_masked_fit_keeps_zeros():
    params, apply_fn = lscjax.models.init(LeNet300())
    x, y = lscjax.data.fashion_mnist("train")
    x, y = x[:3000], y[:3000]
    before = lscjax.models.accuracy(apply_fn, params, x, y)
    params, _ = lscjax.models.fit(apply_fn, params, optax.adam(1e-3), x, y, steps=150)
    after = lscjax.models.accuracy(apply_fn, params, x, y)
    assert before < 0.3 and after > 0.7
    masks = lscjax.prune.magnitude(params, 0.9)
    pruned = lscjax.prune.apply(params, masks)
    opt = lscjax.train.keep_masks(optax.adam(1e-3), masks)
    retrained, _ = lscjax.models.fit(apply_fn, pruned, opt, x, y, steps=50)
    assert lscjax.prune.sparsity(retrained) == pytest.approx(
        {"Dense_0/kernel": 0.9, "Dense_1/kernel": 0.9, "Dense_2/kernel": 0.9}, abs=1e-3
    )
