"""lscjax.prune.dense_target against independent oracles: NumPy's (ridge) least squares of the
drifted inputs onto the dense model's outputs, the undrifted case (nothing to move), and the
dense model's outputs after layer-sequential pruning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax._src.prune.hessian import LayerStats


def stats_of(x, x_dense):
    x, x_dense = np.asarray(x, np.float64), np.asarray(x_dense, np.float64)
    return LayerStats(
        jnp.asarray(x.T @ x, jnp.float32),
        jnp.asarray(np.sqrt((x * x).sum(0)), jnp.float32),
        len(x),
        jnp.asarray(x.T @ x_dense, jnp.float32),
    )


@pytest.fixture(scope="module")
def drifted():
    """Dense inputs x_dense [2048, 24] of spread scales, the drifted inputs x (x_dense plus
    correlated noise and a dead feature), and a Conv-shaped kernel [2, 3, 4, 6] (matrix view
    [24, 6])."""
    rng = np.random.default_rng(0)
    x_dense = rng.normal(size=(2048, 24)) * np.exp(rng.normal(size=24) / 2)
    x = (
        x_dense
        + 0.3 * x_dense @ rng.normal(size=(24, 24)) / 5
        + 0.1 * rng.normal(size=x_dense.shape)
    )
    x[:, 5] = 0.0
    w = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    return x.astype(np.float32), x_dense.astype(np.float32), {"conv": {"kernel": w}}


def _ridge(x, x_dense, w, damp, keep=None):
    """Per output channel j, NumPy least squares of [X / sqrt(s); sqrt(lam) I] v_S ~
    [X_dense w_j / sqrt(s); sqrt(lam) w_j] on its kept inputs S (default all; s: the mean of
    diag(X^T X) over live features, lam = damp), v = 0 off S: the target's objective
    ||X v - X_dense w_j||^2 / s + lam ||v - w_j||^2 as an ordinary least-squares problem."""
    x, x_dense, w = (np.asarray(a, np.float64) for a in (x, x_dense, w))
    keep = np.ones(w.shape, bool) if keep is None else keep
    diag = np.diag(x.T @ x)
    s = np.mean(np.where(diag <= 0, 1.0, diag))
    out = np.zeros(w.shape)
    for j in range(w.shape[1]):
        k = keep[:, j]
        a = np.vstack([x[:, k] / np.sqrt(s), np.sqrt(damp) * np.eye(len(w))[:, k]])
        b = np.concatenate([x_dense @ w[:, j] / np.sqrt(s), np.sqrt(damp) * w[:, j]])
        out[k, j] = np.linalg.lstsq(a, b, rcond=None)[0]
    return out


@pytest.mark.parametrize("damp", [1e-4, 0.01, 0.3])
def test_dense_target_is_the_least_squares_fit_to_the_dense_outputs(drifted, damp):
    x, x_dense, params = drifted
    got = lscjax.prune.dense_target(params, {"conv/kernel": stats_of(x, x_dense)}, damp=damp)
    w = params["conv"]["kernel"].reshape(24, 6)
    want = _ridge(x, x_dense, w, damp)
    assert got["conv"]["kernel"].shape == (2, 3, 4, 6)
    assert got["conv"]["kernel"].dtype == np.float32
    np.testing.assert_allclose(
        np.asarray(got["conv"]["kernel"]).reshape(24, 6), want, rtol=2e-3, atol=2e-3
    )
    # it reproduces the dense outputs from the drifted inputs better than the dense kernel
    err = lambda v: np.linalg.norm(x @ v - x_dense @ w)  # noqa: E731
    assert err(np.asarray(got["conv"]["kernel"]).reshape(24, 6)) < 0.8 * err(w)


def test_zero_weights_stay_zero_and_the_rest_fit_on_their_support(drifted):
    """A pruned kernel (its zeros) is retargeted on its kept weights only."""
    x, x_dense, params = drifted
    w = params["conv"]["kernel"].reshape(24, 6)
    keep = np.random.default_rng(2).random(w.shape) < 0.5
    pruned = {"conv": {"kernel": (w * keep).reshape(2, 3, 4, 6)}}
    got = lscjax.prune.dense_target(pruned, {"conv/kernel": stats_of(x, x_dense)}, damp=0.01)
    got = np.asarray(got["conv"]["kernel"]).reshape(24, 6)
    assert np.all(got[~keep] == 0)
    want = _ridge(x, x_dense, w * keep, 0.01, keep)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_undrifted_inputs_keep_the_kernel(drifted):
    _, x_dense, params = drifted
    got = lscjax.prune.dense_target(params, {"conv/kernel": stats_of(x_dense, x_dense)})
    np.testing.assert_allclose(got["conv"]["kernel"], params["conv"]["kernel"], atol=1e-5)


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        for width in (32, 32):
            x = nn.gelu(nn.Dense(width)(x))
        return nn.Dense(8)(x)


def test_sequential_pruning_towards_the_dense_target_tracks_the_dense_model():
    """SparseGPT + refit of every layer, each aimed at the dense model's outputs from its
    drifted inputs: the pruned model's outputs are closer to the dense model's on the
    calibration data than when each layer reproduces its own outputs."""
    net = Mlp()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(512, 16)) @ rng.normal(size=(16, 16)), jnp.float32)
    params = net.init(jax.random.key(0), x)["params"]
    cal = lscjax.Calibration(lambda p, b: net.apply({"params": p}, b), [x[:256], x[256:]])

    def layer(aimed):
        def compress_layer(p, one):
            if aimed:
                p = lscjax.prune.dense_target(p, one, damp=0.01)
            pruned, masks = lscjax.prune.sparsegpt(p, one, 0.7)
            return lscjax.prune.refit(p, masks, one, start=pruned)

        return compress_layer

    dense = net.apply({"params": params}, x)
    errors = {
        aimed: float(
            jnp.linalg.norm(
                net.apply({"params": cal.sequential(params, layer(aimed), cross=aimed)}, x) - dense
            )
        )
        for aimed in (False, True)
    }
    assert errors[True] < 0.9 * errors[False]


def test_bad_target_input_is_refused(drifted):
    x, x_dense, params = drifted
    s = stats_of(x, x_dense)
    with pytest.raises(LscError, match="'conv/kernel'.*no cross"):
        lscjax.prune.dense_target(params, {"conv/kernel": s._replace(cross=None)})
    with pytest.raises(LscError, match="'conv/kernel'.*cross of shape"):
        lscjax.prune.dense_target(params, {"conv/kernel": s._replace(cross=s.cross[:3])})
    with pytest.raises(LscError, match="damp"):
        lscjax.prune.dense_target(params, {"conv/kernel": s}, damp=2.0)
    with pytest.raises(LscError, match="no calibration stats"):
        lscjax.prune.dense_target(params, {}, where=lambda p, _: p == "conv/kernel")
