"""Masked retraining: an optax wrapper that keeps pruned weights at exactly zero."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lscjax._src.errors import LscError
from lscjax._src.tree import check_matching, leaves_with_paths


class KeepMasksState(NamedTuple):
    """State of `keep_masks`: the inner optimizer's state."""

    inner_state: optax.OptState


def mask_updates(updates, masks):
    """Zero `updates` where `masks` is False; leaves whose mask is None pass unchanged."""

    def one(u, m):
        return u if m is None else jnp.where(m, u, jnp.zeros((), u.dtype))

    return jax.tree_util.tree_map(one, updates, masks, is_leaf=lambda x: x is None)


def keep_masks(inner: optax.GradientTransformation, masks) -> optax.GradientTransformation:
    """Wrap `inner` so that pruned weights receive exactly zero updates.

    Gradients are masked before `inner` (so Adam moments never see pruned positions) and the
    inner updates are masked after it (so decoupled weight decay, momentum or any other term
    cannot move a pruned weight). Pruned weights that are 0.0 stay exactly 0.0; apply the masks
    with `lscjax.prune.apply` before training.

    Args:
      inner: any optax GradientTransformation.
      masks: pytree with the params' structure: bool arrays (True = trainable) or None (leaf
        trained normally), e.g. from `lscjax.prune.magnitude`.

    Returns:
      An optax GradientTransformationExtraArgs (extra keyword arguments of ``update``, e.g.
      optax.lbfgs's value, grad and value_fn, go to `inner`, as in optax.masked) with state
      `KeepMasksState`.

    Raises:
      LscError (from ``init``): masks whose tree does not match the params (missing or extra
        leaves), or a mask whose shape differs from its leaf's (no broadcasting).

    Example:
      >>> masks = lscjax.prune.magnitude(params, 0.9)
      >>> params = lscjax.prune.apply(params, masks)
      >>> opt = lscjax.train.keep_masks(optax.adamw(1e-3, weight_decay=1e-4), masks)
    """

    inner = optax.with_extra_args_support(inner)

    def init(params):
        if type(params).__name__ == "_ParamsPlaceholder":  # optax.tree_map_params: no params
            return KeepMasksState(inner.init(params))
        picked = check_matching(params, masks, "keep_masks: masks tree")
        for path, leaf in leaves_with_paths(params):
            mask = picked[path]
            if mask is not None and jnp.shape(mask) != jnp.shape(leaf):
                raise LscError(
                    f"keep_masks: mask for {path!r} has shape {jnp.shape(mask)}, "
                    f"the leaf {jnp.shape(leaf)}"
                )
        return KeepMasksState(inner.init(params))

    def update(updates, state, params=None, **extra_args):
        updates, inner_state = inner.update(
            mask_updates(updates, masks), state.inner_state, params, **extra_args
        )
        return mask_updates(updates, masks), KeepMasksState(inner_state)

    return optax.GradientTransformationExtraArgs(init, update)
