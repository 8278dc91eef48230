"""Unstructured magnitude pruning (Han et al. 2015): scores -> bool masks, and their application.

Masks are pytrees with the structure of the params: bool arrays at the selected leaves (True =
kept), None elsewhere.
"""

import math

import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.tree import Where, check_float_leaf, check_matching, map_selected, selected_leaves


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Raise LscError unless 0 <= sparsity < 1."""
    if not (isinstance(sparsity, int | float | np.floating) and 0.0 <= float(sparsity) < 1.0):
        raise LscError(f"{what} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def keep_count(n: int, sparsity: float) -> int:
    """Number of weights kept out of `n` at `sparsity`: round(n * (1 - sparsity))."""
    return int(round(n * (1.0 - sparsity)))


def topk_mask(scores: jnp.ndarray, k: int) -> jnp.ndarray:
    """Bool mask of the `k` largest `scores` (any shape), exactly k True.

    Ties are broken deterministically: among equal scores the lower flat index is kept.
    """
    flat = scores.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    return keep.reshape(scores.shape)


def _checked(params, where):
    leaves = selected_leaves(params, where)
    for path, leaf in leaves:
        check_float_leaf(path, leaf)
    return leaves


def magnitude(params, sparsity: float, *, scope: str = "layer", where: Where = None):
    """Masks keeping the largest-magnitude weights.

    Args:
      params: pytree of arrays.
      sparsity: fraction of weights removed, in [0, 1). Exactly ``round(n * (1 - sparsity))``
        weights are kept per selected leaf (scope="layer") or over all selected leaves together
        (scope="global").
      scope: "layer" or "global".
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      Masks: bool arrays (True = kept) shaped like the selected leaves, None elsewhere. Ties in
      magnitude are broken by keeping the lower flat index (global: in leaf flattening order).

    Raises:
      LscError (a ValueError): sparsity outside [0, 1), unknown scope, a selected leaf that is not
        floating point or holds NaN/Inf (the message names the leaf path).
    """
    sparsity = check_sparsity(sparsity)
    leaves = _checked(params, where)
    if scope == "layer":
        return map_selected(
            lambda _, w: topk_mask(jnp.abs(w), keep_count(w.size, sparsity)), params, where=where
        )
    if scope != "global":
        raise LscError(f"scope must be 'layer' or 'global', got {scope!r}")
    if not leaves:
        return map_selected(lambda _, w: w, params, where=where)
    flat = jnp.concatenate([jnp.abs(w).reshape(-1).astype(jnp.float32) for _, w in leaves])
    keep = topk_mask(flat, keep_count(flat.size, sparsity))
    offsets = dict(
        zip([p for p, _ in leaves], np.cumsum([0] + [w.size for _, w in leaves]), strict=False)
    )
    return map_selected(
        lambda path, w: keep[offsets[path] : offsets[path] + w.size].reshape(w.shape),
        params,
        where=where,
    )


def std_threshold(params, quality: float, *, where: Where = None):
    """Han et al. 2015: keep weights with ``|w| > quality * std(w)`` per layer.

    Args:
      params: pytree of arrays.
      quality: the quality parameter (>= 0) multiplying each layer's weight standard deviation.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      Masks (bool, True = kept; None at unselected leaves).
    """
    if not (isinstance(quality, int | float) and quality >= 0 and math.isfinite(quality)):
        raise LscError(f"quality must be a finite number >= 0, got {quality!r}")
    _checked(params, where)
    return map_selected(lambda _, w: jnp.abs(w) > quality * jnp.std(w), params, where=where)


def apply(params, masks):
    """Zero the pruned weights: ``w * mask`` at leaves where `masks` has an array, others unchanged.

    Raises:
      LscError: masks whose tree does not match the params (missing or extra leaves), or a mask
        whose shape differs from its leaf (names the path).
    """
    check_matching(params, masks, "masks tree")

    def one(path, w, m):
        if m is None:
            return w
        if jnp.shape(m) != jnp.shape(w):
            raise LscError(f"mask for {path!r} has shape {jnp.shape(m)}, the leaf {jnp.shape(w)}")
        return jnp.where(m, w, jnp.zeros((), jnp.result_type(w)))

    return map_selected(one, params, masks, where=lambda *_: True, fill="keep")


def sparsity(tree, *, where: Where = None) -> dict[str, float]:
    """Fraction of zeros (False for bool masks) of each selected leaf: {path: fraction}.

    Works on params (zeros) and on masks (pruned entries). Default selection: 'kernel' leaves
    with ndim >= 2; None leaves are skipped.
    """
    return {
        path: float(np.mean(np.asarray(leaf) == 0)) if np.size(leaf) else 0.0
        for path, leaf in selected_leaves(tree, where)
    }


def count_params(tree, *, where: Where = None) -> dict[str, tuple[int, int]]:
    """{path: (non-zeros, size)} of the selected leaves."""
    return {
        path: (int(np.count_nonzero(np.asarray(leaf))), int(np.size(leaf)))
        for path, leaf in selected_leaves(tree, where)
    }
