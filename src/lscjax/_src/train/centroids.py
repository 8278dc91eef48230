"""Centroid fine-tuning: an optax wrapper that trains the shared values of a quantized model.

The model keeps training on dense params (so any loss, `fit` and `jax.grad` work unchanged); the
wrapper turns the dense weight gradients into centroid gradients (`centroid_grads`), lets the
inner optimizer update the codebooks, and moves every dense weight to its centroid's new value.
Assignments never change and pruned zeros (the 0.0 code of "kmeans" QArrays) stay exactly 0.0.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lscjax._src.errors import LscError
from lscjax._src.quant.grads import centroid_grads, fixed_entries
from lscjax._src.quant.qarray import QArray, check_qarray, dequantize, is_qarray
from lscjax._src.tree import path_str


class SharedCentroidsState(NamedTuple):
    """State of `shared_centroids`.

    Attributes:
      quantized: the QArray tree with the current (fine-tuned) codebooks; leaves that are not
        quantized are None.
      inner_state: the inner optimizer's state (over codebooks and the unquantized leaves).
    """

    quantized: object
    inner_state: optax.OptState


def _paired(qparams, fn, tree, *rest):
    """Map ``fn(path, q_or_None, leaf, *rest_leaves)`` over `tree`, with `qparams`' QArrays."""
    flat_q = jax.tree_util.tree_flatten_with_path(qparams, is_leaf=is_qarray)[0]
    by_path = {path_str(kp): q for kp, q in flat_q if is_qarray(q)}

    def one(kp, leaf, *others):
        path = path_str(kp)
        return fn(path, by_path.get(path), leaf, *others)

    return jax.tree_util.tree_map_with_path(one, tree, *rest, is_leaf=lambda x: x is None)


def _checked(qparams, params):
    def one(path, q, leaf):
        if q is not None:
            check_qarray(path, q, jnp.shape(leaf))
        return leaf

    _paired(qparams, one, params)


def _trainable(quantized, params):
    """The inner optimizer's tree: codebooks at quantized leaves, the params elsewhere."""
    return _paired(quantized, lambda _, q, leaf: leaf if q is None else q.codebook, params)


def shared_centroids(
    inner: optax.GradientTransformation, qparams=None
) -> optax.GradientTransformation:
    """Wrap `inner` so that training moves only the shared values (centroids) of `qparams`.

    Train the dense params ``lscjax.quant.dequantize(qparams)`` with this optimizer. At each
    step, the gradient of every quantized leaf becomes its centroid gradients (the sum of the
    member weights' gradients; Deep Compression), `inner` updates the codebooks (and, as usual,
    the leaves that are not quantized, e.g. biases), and the returned updates move every dense
    weight to its centroid's new value. Codes never change; the 0.0 entry of a pruned "kmeans"
    layer never trains, so pruned weights stay exactly 0.0. Each leaf keeps at most one distinct
    value per codebook entry. The fine-tuned QArrays are ``state.quantized`` (see
    `quantized_params`).

    Args:
      inner: any optax GradientTransformation (it sees codebooks in place of quantized weights).
      qparams: the params with QArray leaves (e.g. from `lscjax.quant.kmeans`), same tree
        structure as the dense params being trained. None: ``init`` takes this QArray tree
        instead of the dense params (``shared_centroids(inner).init(qparams)``); pass that
        state to the training loop with the dense ``dequantize(qparams)``.

    Returns:
      An optax GradientTransformationExtraArgs (extra keyword arguments of ``update``, e.g.
      optax.lbfgs's value, grad and value_fn, go to `inner`, as in optax.masked) with state
      `SharedCentroidsState`. Its ``update`` needs `params` (the current dense params).

    Raises:
      LscError (a ValueError): at init, a QArray whose shape differs from the params leaf, or an
        inconsistent QArray (names the leaf path); at update, params not given.

    Example:
      >>> bits = {"Conv_0/kernel": 8, "Conv_1/kernel": 8, "Dense_0/kernel": 5, "Dense_1/kernel": 5}
      >>> q = lscjax.quant.kmeans(params, bits)  # or one int for every selected leaf
      >>> opt = lscjax.train.shared_centroids(optax.adam(1e-4), q)
      >>> params, state = lscjax.models.fit(apply_fn, lscjax.quant.dequantize(q), opt, x, y,
      ...                                   steps=20)
      >>> q = lscjax.train.quantized_params(params, state)
      >>> opt = lscjax.train.shared_centroids(optax.adam(1e-4))  # or: init from the QArrays
      >>> params, state = lscjax.models.fit(apply_fn, lscjax.quant.dequantize(q), opt, x, y,
      ...                                   steps=20, opt_state=opt.init(q))
    """

    inner = optax.with_extra_args_support(inner)

    def init(params):
        if qparams is None:  # shared_centroids(inner).init(qparams): the QArray tree itself
            return init_from(params, dequantize(params))
        return init_from(qparams, params)

    def init_from(qtree, params):
        if not any(is_qarray(leaf) for leaf in jax.tree_util.tree_leaves(qtree, is_leaf=is_qarray)):
            raise LscError(
                "shared_centroids found no QArray: pass the quantized tree, as "
                "shared_centroids(inner, qparams) or shared_centroids(inner).init(qparams)"
            )
        _checked(qtree, params)
        # Own buffers: training loops donate the optimizer state, which must not free qtree.
        quantized = jax.tree_util.tree_map(jnp.copy, _paired(qtree, lambda _, q, leaf: q, params))
        return SharedCentroidsState(quantized, inner.init(_trainable(quantized, params)))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise LscError("shared_centroids needs params in update(updates, state, params)")
        grads = _paired(
            state.quantized,
            lambda path, q, g: g if q is None else centroid_grads(q, g, path=path),
            updates,
        )
        inner_updates, inner_state = inner.update(
            grads, state.inner_state, _trainable(state.quantized, params), **extra_args
        )

        def moved(_, q, step):
            if q is None:
                return None
            codebook = q.codebook + jnp.where(fixed_entries(q), 0.0, step)
            return QArray(q.codes, codebook, q.method, q.bits, q.shape)

        quantized = _paired(state.quantized, moved, inner_updates)

        def dense_update(_, q, step, param):
            return step if q is None else (q.dequantize() - param).astype(param.dtype)

        out = _paired(quantized, dense_update, inner_updates, params)
        return out, SharedCentroidsState(quantized, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def quantized_params(params, state: SharedCentroidsState):
    """The params with their fine-tuned QArrays: `state.quantized` where quantized, else `params`."""
    return _paired(state.quantized, lambda _, q, leaf: leaf if q is None else q, params)
