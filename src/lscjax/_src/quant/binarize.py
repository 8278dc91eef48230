"""Binarization (Gong et al. 2014): each weight becomes its sign times a scale."""

import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves


def binarize_leaf(w, scale: str) -> QArray:
    """One weight array as a 1-bit "binarize" QArray (see `binarize`)."""
    w = jnp.asarray(w, jnp.float32)
    codes = (w >= 0).astype(jnp.uint8)
    if scale == "layer":
        a = jnp.mean(jnp.abs(w))
        return QArray(codes, jnp.stack([-a, a]), "binarize", 1, tuple(w.shape))
    rows = jnp.abs(w).reshape(-1, w.shape[-1]) if w.ndim > 1 else jnp.abs(w)[None]
    a = jnp.mean(rows, axis=1)
    return QArray(codes, jnp.stack([-a, a], axis=1), "binarize", 1, tuple(w.shape))


def binarize(params, *, scale: str = "layer", where: Where = None):
    """Binarize the selected weights: ``w -> sign(w) * a`` (Gong et al. 2014), 1 bit per weight.

    The scale ``a = mean(|w|)`` is the least-squares optimal one for a fixed sign pattern. Code 1
    is +a (weights >= 0), code 0 is -a.

    Args:
      params: pytree of float arrays.
      scale: "layer" (one scale per leaf: codebook float32 [2] = [-a, a]) or "row" (one scale per
        row of the leaf's 2-D view [prod(shape[:-1]), shape[-1]]: codebook float32 [rows, 2],
        row r holding [-a_r, a_r]; a 1-D leaf is one row).
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      The params with a "binarize" QArray (codes uint8 of the leaf's shape, bits 1) at every
      selected leaf; other leaves unchanged.

    Raises:
      LscError (a ValueError): unknown scale, a selected leaf that is not floating point or holds
        NaN/Inf (names the leaf path).
    """
    if scale not in ("layer", "row"):
        raise LscError(f"scale must be 'layer' or 'row', got {scale!r}")
    for path, leaf in selected_leaves(params, where):
        check_float_leaf(path, leaf)
    return map_selected(lambda _, w: binarize_leaf(w, scale), params, where=where, fill="keep")
