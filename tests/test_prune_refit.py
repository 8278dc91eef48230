"""lscjax.prune.refit against independent oracles: NumPy's least squares on each output
channel's kept inputs, the identity Hessian (nothing to move), and the errors of the pruners
whose masks it refits."""

import jax.numpy as jnp
import numpy as np
import pytest

import lscjax
from lscjax import LscError
from lscjax._src.prune.hessian import LayerStats


def stats_of(x):
    x = np.asarray(x, np.float64)
    return LayerStats(
        jnp.asarray(x.T @ x, jnp.float32), jnp.asarray(np.sqrt((x * x).sum(0)), jnp.float32), len(x)
    )


@pytest.fixture(scope="module")
def planted():
    """Correlated inputs x [4096, 48] of spread scales and a Conv-shaped kernel [2, 2, 12, 10]
    (matrix view [48, 10])."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4096, 48))
    x = (z @ (np.eye(48) + 0.5 * rng.normal(size=(48, 48)) / 7)) * np.exp(rng.normal(size=48) / 2)
    w = rng.normal(size=(2, 2, 12, 10)).astype(np.float32)
    return x.astype(np.float32), {"conv": {"kernel": w, "bias": np.ones(10, np.float32)}}


def _ridge_lstsq(x, w, keep, damp):
    """Per output channel j, NumPy's least squares of [X; sqrt(lam) I] v_S ~ [X w_j;
    sqrt(lam) w_j] on the kept inputs S (lam = damp x the mean of diag(X^T X)): the refit's
    objective written as an ordinary least-squares problem."""
    x = np.asarray(x, np.float64)
    h = x.T @ x
    lam = damp * np.mean(np.diag(h))
    out = np.zeros(w.shape)
    for j in range(w.shape[1]):
        s = keep[:, j]
        a = np.vstack([x[:, s], np.sqrt(lam) * np.eye(len(w))[:, s]])
        b = np.concatenate([x @ w[:, j], np.sqrt(lam) * w[:, j]])
        out[s, j] = np.linalg.lstsq(a, b, rcond=None)[0]
    return out


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_refit_is_the_least_squares_solution_on_the_kept_weights(planted, method):
    x, params = planted
    stats = {"conv/kernel": stats_of(x)}
    where = lambda p, _: p == "conv/kernel"  # noqa: E731
    if method == "magnitude":
        masks = lscjax.prune.magnitude(params, 0.6, where=where)
        start = None
    else:
        start, masks = getattr(lscjax.prune, method)(params, stats, 0.6)
    got = lscjax.prune.refit(params, masks, stats, start=start)
    w = params["conv"]["kernel"].reshape(48, 10).astype(np.float64)
    keep = np.asarray(masks["conv"]["kernel"]).reshape(48, 10)
    want = _ridge_lstsq(x, w, keep, 0.01)
    kernel = np.asarray(got["conv"]["kernel"])
    assert kernel.shape == (2, 2, 12, 10) and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel.reshape(48, 10), want, rtol=2e-3, atol=2e-3 * np.abs(w).max())
    assert np.all(kernel.reshape(48, 10)[~keep] == 0)  # the mask is not changed
    np.testing.assert_array_equal(got["conv"]["bias"], params["conv"]["bias"])


def test_refit_lowers_every_pruners_output_error(planted):
    x, params = planted
    stats = {"conv/kernel": stats_of(x)}
    w = params["conv"]["kernel"].reshape(48, 10)

    def error(p):
        return float(np.linalg.norm(x @ w - x @ np.asarray(p["conv"]["kernel"]).reshape(48, 10)))

    for prune in (lscjax.prune.sparsegpt, lscjax.prune.wanda):
        pruned, masks = prune(params, stats, 0.5)
        refit = lscjax.prune.refit(params, masks, stats, start=pruned)
        assert error(refit) < 0.99 * error(pruned), prune.__name__


def test_refit_with_identity_hessian_keeps_the_dense_weights(planted):
    # H = I: each kept weight's own error is all there is, so the kept weights stay as they are
    _, params = planted
    stats = {"conv/kernel": LayerStats(jnp.eye(48), jnp.ones(48), 48)}
    masks = lscjax.prune.magnitude(params, 0.5, where=lambda p, _: p == "conv/kernel")
    got = lscjax.prune.refit(params, masks, stats)
    w = params["conv"]["kernel"]
    np.testing.assert_allclose(
        got["conv"]["kernel"], np.where(masks["conv"]["kernel"], w, 0), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(damp=2.0), "damp"),
        (dict(iters=0), "iters"),
        (dict(iters=True), "iters"),
        (dict(masks={"conv": {"kernel": np.ones((48, 10), bool), "bias": None}}), "mask shape"),
        (dict(masks={"conv": {"kernel": None, "bias": None}}), "selects none|no"),
        (dict(stats={}), "no calibration stats"),
    ],
)
def test_bad_arguments_name_the_leaf(planted, kwargs, match):
    x, params = planted
    args = dict(
        masks=lscjax.prune.magnitude(params, 0.5, where=lambda p, _: p == "conv/kernel"),
        stats={"conv/kernel": stats_of(x)},
    )
    args |= kwargs
    with pytest.raises(LscError, match=match):
        lscjax.prune.refit(params, args.pop("masks"), args.pop("stats"), **args)
