"""Sparsity distributions over layers: uniform, ERK, an explicit {path: sparsity} map, global.

A distribution turns one overall sparsity into a sparsity per selected leaf. "global" is not a
per-leaf rule (one magnitude threshold across all leaves decides), so `layer_sparsities` does
not take it; `distributed_magnitude` and `lscjax.train.gradual` do.
"""

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.prune.magnitude import check_sparsity, keep_count, magnitude, topk_mask
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves


def erk_sparsities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel sparsities (Evci et al. 2020, RigL).

    Each layer's density is proportional to ``sum(shape) / prod(shape)``, scaled so that the
    total number of kept weights is ``(1 - sparsity) * sum(prod(shape))``; layers whose density
    would exceed 1 are kept dense and the rest rescaled.

    Args:
      shapes: {path: shape} of the layers.
      sparsity: overall sparsity in [0, 1).

    Returns:
      {path: sparsity in [0, 1]} whose weighted mean (by layer size) is `sparsity`; a layer of
      size 0 gets 0.0 (it holds nothing to prune).
    """
    sparsity = check_sparsity(sparsity)
    paths = list(shapes)
    sizes = np.array([np.prod(shapes[p]) for p in paths], np.float64)
    dense = sizes == 0  # an empty layer holds no weight to prune: sparsity 0
    raw = np.array([np.sum(shapes[p]) for p in paths], np.float64) / np.where(dense, 1, sizes)
    budget = (1.0 - sparsity) * sizes.sum()
    while True:
        free = budget - sizes[dense].sum()
        eps = free / np.sum(raw[~dense] * sizes[~dense]) if (~dense).any() else 0.0
        density = np.where(dense, 1.0, eps * raw)
        over = (density > 1.0) & ~dense
        if not over.any():
            break
        dense[np.argmax(np.where(over, raw, -np.inf))] = True
    return {p: float(1.0 - d) for p, d in zip(paths, np.clip(density, 0.0, 1.0), strict=True)}


def layer_sparsities(
    params,
    sparsity: float | Mapping[str, float],
    distribution: str = "uniform",
    *,
    where: Where = None,
) -> dict[str, float]:
    """The sparsity of each selected leaf under a per-layer distribution.

    Args:
      params: pytree of arrays (only shapes are read).
      sparsity: overall sparsity in [0, 1), or a {path: sparsity} map giving every selected leaf
        its own (then `distribution` is ignored).
      distribution: "uniform" (every leaf at `sparsity`) or "erk" (see `erk_sparsities`).
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      {path: sparsity} for the selected leaves, in flattening order.

    Raises:
      LscError: unknown distribution, a sparsity outside [0, 1), a map that misses a selected
        path or names an unselected one.
    """
    shapes = {p: tuple(np.shape(w)) for p, w in selected_leaves(params, where)}
    if isinstance(sparsity, Mapping):
        missing = sorted(set(shapes) - set(sparsity))
        unknown = sorted(set(sparsity) - set(shapes))
        if missing or unknown:
            raise LscError(
                f"sparsity map does not match the selected leaves: missing {missing[:5]}, "
                f"unknown {unknown[:5]}"
            )
        return {p: check_sparsity(sparsity[p], f"sparsity of {p!r}") for p in shapes}
    if distribution == "uniform":
        return dict.fromkeys(shapes, check_sparsity(sparsity))
    if distribution == "erk":
        return erk_sparsities(shapes, sparsity)
    raise LscError(f"distribution must be 'uniform' or 'erk' (or a map), got {distribution!r}")


def distributed_magnitude(
    params,
    sparsity: float | Mapping[str, float],
    distribution: str = "uniform",
    *,
    where: Where = None,
):
    """Magnitude masks with the per-layer sparsities of a distribution, or one global threshold.

    Args:
      params: pytree of arrays.
      sparsity: overall sparsity in [0, 1) or a {path: sparsity} map.
      distribution: "uniform", "erk" or "global" (`magnitude(..., scope="global")`).
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      Masks: bool arrays (True = kept) at the selected leaves, None elsewhere.
    """
    if distribution == "global" and not isinstance(sparsity, Mapping):
        return magnitude(params, sparsity, scope="global", where=where)
    per_leaf = layer_sparsities(params, sparsity, distribution, where=where)
    for path, w in selected_leaves(params, where):
        check_float_leaf(path, w)
    return map_selected(
        lambda path, w: topk_mask(jnp.abs(w), keep_count(w.size, per_leaf[path])),
        params,
        where=where,
    )
