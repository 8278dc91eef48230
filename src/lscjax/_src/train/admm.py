"""ADMM weight pruning (Zhang et al. 2018), the optax side: the W-step penalty and Z/U updates.

Training minimizes ``f(W) + sum_l (rho/2) ||W_l - Z_l + U_l||^2``; every `every` steps
``Z_l = project_topk(W_l + U_l, k_l)`` and ``U_l += W_l - Z_l``. Afterwards, hard-prune to the
support of Z (`admm_masks`) and retrain with `keep_masks`.
"""

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lscjax._src.errors import LscError
from lscjax._src.prune.admm import project_topk
from lscjax._src.prune.distributions import layer_sparsities
from lscjax._src.prune.magnitude import keep_count
from lscjax._src.tree import Where, map_selected, selected_leaves


class AdmmState(NamedTuple):
    """State of `admm`.

    Attributes:
      count: int32 []: steps taken.
      z: the params' structure: the projected copies Z_l (float, at most k_l non-zeros) at the
        pruned leaves, None elsewhere.
      u: same structure: the scaled dual variables U_l.
      inner_state: the inner optimizer's state.
    """

    count: jax.Array
    z: Any
    u: Any
    inner_state: optax.OptState


def _none(x) -> bool:
    return x is None


def admm(
    inner: optax.GradientTransformation,
    sparsity: float | Mapping[str, float],
    *,
    rho: float | Callable[[jax.Array], jax.Array],
    every: int,
    where: Where = None,
) -> optax.GradientTransformation:
    """Wrap `inner` with the ADMM W-step penalty and periodic Z- and U-updates.

    Each step adds the gradient of ``(rho/2) ||W - Z + U||^2``, i.e. ``rho (W - Z + U)``, to
    the selected leaves' gradients before `inner`. After the step count reaches a multiple of
    `every`, with W the updated params: ``Z = project_topk(W + U, k)`` and ``U = U + W - Z``.
    Z starts as ``project_topk(W_0, k)`` and U at 0.

    Args:
      inner: any optax GradientTransformation.
      sparsity: target sparsity in [0, 1), or per-layer targets {path: sparsity}; layer l keeps
        ``k_l = round(size_l * (1 - s_l))`` weights.
      rho: the penalty weight, or an optax-style schedule ``count -> rho``.
      every: steps between Z/U updates (an ADMM iteration), >= 1.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      An optax GradientTransformationExtraArgs (extra keyword arguments of ``update``, e.g.
      optax.lbfgs's value, grad and value_fn, go to `inner`, as in optax.masked) with state
      `AdmmState`; its update needs `params`.

    Raises:
      LscError: bad sparsity/map, every or rho (a constant rho must be finite and >= 0), or an
        update called without params.

    Example:
      >>> targets = {"Conv_0/kernel": 0.8, "Conv_1/kernel": 0.92, "Dense_0/kernel": 0.95,
      ...            "Dense_1/kernel": 0.8}
      >>> opt = lscjax.train.admm(optax.adam(1e-3), targets, rho=1e-3, every=5)
      >>> params, state = lscjax.models.fit(apply_fn, params, opt, x, y, steps=6 * 5)
      >>> masks = lscjax.train.admm_masks(state)
      >>> opt = lscjax.train.keep_masks(optax.adam(1e-3), masks)  # retrain
    """
    if not (isinstance(every, int) and every >= 1):
        raise LscError(f"every must be an int >= 1, got {every!r}")
    if not callable(rho) and not (
        isinstance(rho, int | float) and not isinstance(rho, bool) and 0 <= rho < math.inf
    ):
        raise LscError(f"rho must be a finite number >= 0 or a schedule, got {rho!r}")

    def counts(params):
        sizes = {p: int(jnp.size(w)) for p, w in selected_leaves(params, where)}
        targets = layer_sparsities(params, sparsity, where=where)
        return {p: keep_count(sizes[p], s) for p, s in targets.items()}

    def project(params, shift):
        k = counts(params)
        return map_selected(lambda p, w, s: project_topk(w + s, k[p]), params, shift, where=where)

    inner = optax.with_extra_args_support(inner)

    def init(params):
        u = map_selected(lambda _, w: jnp.zeros_like(w), params, where=where)
        return AdmmState(jnp.zeros((), jnp.int32), project(params, u), u, inner.init(params))

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise LscError("admm needs params: call update(updates, state, params)")
        r = rho(state.count) if callable(rho) else rho

        def penalized(g, w, z, u):
            return g if z is None else g + r * (w - z + u)

        grads = jax.tree_util.tree_map(penalized, grads, params, state.z, state.u, is_leaf=_none)
        updates, inner_state = inner.update(grads, state.inner_state, params, **extra_args)
        count = state.count + 1

        def zu_step():
            new_w = optax.apply_updates(params, updates)
            z = project(new_w, state.u)
            u = jax.tree_util.tree_map(
                lambda u, w, z: None if u is None else u + w - z, state.u, new_w, z, is_leaf=_none
            )
            return z, u

        z, u = jax.lax.cond(count % every == 0, zu_step, lambda: (state.z, state.u))
        return updates, AdmmState(count, z, u, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


def admm_masks(state: AdmmState):
    """The hard-pruning masks: the support of Z (bool, True = kept; None at unpruned leaves)."""
    return jax.tree_util.tree_map(lambda z: None if z is None else z != 0, state.z, is_leaf=_none)
