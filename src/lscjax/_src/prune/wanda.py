"""Wanda (Sun et al. 2024): prune by |weight| x the L2 norm of its input feature, no update."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.prune.block import block_magnitude, n_of_m
from lscjax._src.prune.hessian import matrix_view, stats_leaves
from lscjax._src.prune.magnitude import check_sparsity, keep_count, topk_mask
from lscjax._src.prune.patterns import check_fits, parse_pattern
from lscjax._src.tree import Where, map_selected


def wanda_mask(path: str, w, stats, sparsity: float, pattern) -> jnp.ndarray:
    """The keep mask of one kernel (bool, its shape); see `wanda`."""
    d = int(stats.gram.shape[0])
    check_fits(path, pattern, d)
    mat = matrix_view(path, w, d, layout=pattern.kind == "block")
    score = jnp.abs(mat) * jnp.asarray(stats.norms, jnp.float32)[:, None]  # [d, n]
    if pattern.kind == "nm":
        keep = n_of_m({"kernel": score}, pattern.n, pattern.m, axis=0)["kernel"]
    elif pattern.kind == "block":
        block = (pattern.b0, pattern.b1)
        keep = block_magnitude({"kernel": score}, sparsity, block=block, reduce="l1")["kernel"]
    else:  # per output: each column keeps its own top (1 - s) of the d features
        kept = keep_count(d, sparsity)
        keep = jax.vmap(lambda s: topk_mask(s, kept), in_axes=1, out_axes=1)(score)
    return keep.reshape(np.shape(w))


def wanda(params, stats: Mapping, sparsity: float, *, pattern=None, where: Where = None):
    """Wanda one-shot pruning of the calibrated layers (Sun et al. 2024).

    A weight's score is ``|W_ij| * ||X_i||`` (the L2 norm of its input feature over the
    calibration inputs). Unstructured: each output channel keeps its own highest-scoring
    ``round(d * (1 - sparsity))`` weights; "n:m": n of every m consecutive input features per
    output; (b0, b1): the highest-scoring tiles of the matrix view ``kernel.reshape(-1, n)``
    (tile score: the sum of its scores; ``round(n_tiles * (1 - sparsity))`` kept per layer).
    The kept weights are not changed.

    Args:
      params: pytree of float arrays (kernels as in `sparsegpt`).
      stats: {path: LayerStats} (from `lscjax.Calibration`); only `norms` is used.
      sparsity: fraction removed per layer, in [0, 1) (ignored by "n:m").
      pattern: None, "n:m" or (b0, b1) (see `sparsegpt`).
      where: the leaves to prune (default: every leaf that `stats` has).

    Returns:
      (params with the pruned weights set to 0, masks bool like the kernels, None elsewhere).

    Raises:
      LscError (a ValueError): as `sparsegpt`.
    """
    sparsity = check_sparsity(sparsity)
    pattern = parse_pattern(pattern)
    masks = {
        path: wanda_mask(path, w, s, sparsity, pattern)
        for path, w, s in stats_leaves(params, stats, where)
    }
    pick = lambda p, _: p in masks  # noqa: E731
    pruned = map_selected(
        lambda p, w: jnp.where(masks[p], w, jnp.zeros((), jnp.result_type(w))),
        params,
        where=pick,
        fill="keep",
    )
    return pruned, map_selected(lambda p, _: masks[p], params, where=pick)
