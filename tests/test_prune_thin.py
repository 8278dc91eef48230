"""thin: the thin model's outputs equal the masked model's, with fewer parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import prune

CONSUMERS = {"Conv_0": "Conv_1", "Conv_1": "Dense_0", "Dense_0": "Dense_1"}


class Net(nn.Module):
    """Conv -> Conv -> flatten (2 x 2 x c1) -> Dense -> Dense, optional BatchNorm after Conv_0."""

    features: tuple[int, int, int] = (6, 8, 10)
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x):
        c0, c1, f0 = self.features
        x = nn.Conv(c0, (3, 3), padding="VALID")(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(c1, (3, 3), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(f0)(x))
        return nn.Dense(3)(x)


def random_variables(model, seed):
    rng = np.random.default_rng(seed)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 14, 14, 1)))
    # non-trivial biases and BatchNorm statistics so that a mistake in either shows
    return jax.tree_util.tree_map(
        lambda v: jnp.asarray(
            rng.normal(size=v.shape) * 0.5 + (1.5 if v.ndim == 1 else 0.0), v.dtype
        ),
        variables,
    )


def param_count(tree) -> int:
    return sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thin_equals_masked_with_fewer_parameters(batch_norm, seed):
    model = Net(batch_norm=batch_norm)
    variables = random_variables(model, seed)
    params = variables["params"]
    rng = np.random.default_rng(100 + seed)
    masks = {layer: rng.random(n) < 0.6 for layer, n in zip(CONSUMERS, (6, 8, 10), strict=True)}
    for m in masks.values():
        m[0] = True
    norms = {"Conv_0": "BatchNorm_0"} if batch_norm else None
    masked = prune.apply(params, prune.weight_masks(params, masks, norms=norms))
    small = prune.thin(
        params, masks, consumers=CONSUMERS, norms=norms, batch_stats=variables.get("batch_stats")
    )
    assert small.features == {k: int(m.sum()) for k, m in masks.items()}
    small_model = Net(tuple(small.features[k] for k in CONSUMERS), batch_norm=batch_norm)
    x = jnp.asarray(rng.normal(size=(5, 14, 14, 1)), jnp.float32)
    want = model.apply({**variables, "params": masked}, x)
    small_vars = {"params": small.params}
    if batch_norm:
        small_vars["batch_stats"] = small.batch_stats
    got = jax.jit(small_model.apply)(small_vars, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert param_count(small.params) < param_count(params)
    # and the thin params are exactly the shapes the smaller module defines
    shapes = jax.tree_util.tree_map(jnp.shape, small_model.init(jax.random.key(0), x)["params"])
    assert jax.tree_util.tree_map(jnp.shape, small.params) == shapes


def test_thin_dense_dense_by_hand():
    params = {
        "Dense_0": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.arange(4.0)},
        "Dense_1": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.zeros(2)},
    }
    small = prune.thin(
        params, {"Dense_0": np.array([True, False, True, False])}, consumers={"Dense_0": "Dense_1"}
    )
    np.testing.assert_array_equal(small.params["Dense_0"]["kernel"], [[0, 2], [4, 6], [8, 10]])
    np.testing.assert_array_equal(small.params["Dense_0"]["bias"], [0, 2])
    np.testing.assert_array_equal(small.params["Dense_1"]["kernel"], [[0, 1], [4, 5]])
    assert small.features == {"Dense_0": 2} and small.batch_stats is None


def test_thin_errors_name_the_path():
    params = {"Dense_0": {"kernel": jnp.ones((3, 4))}, "Dense_1": {"kernel": jnp.ones((6, 2))}}
    with pytest.raises(lscjax.LscError, match="Dense_0/kernel"):
        prune.thin(params, {"Dense_0": np.ones(5, bool)}, consumers={})
    with pytest.raises(lscjax.LscError, match="Dense_1/kernel"):
        prune.thin(params, {"Dense_0": np.ones(4, bool)}, consumers={"Dense_0": "Dense_1"})
    with pytest.raises(lscjax.LscError, match="keeps no channel"):
        prune.thin(params, {"Dense_0": np.zeros(4, bool)}, consumers={})
