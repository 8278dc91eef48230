"""Residual quantization (Gong et al. 2014): each stage quantizes the previous stage's residual."""

import jax
import jax.numpy as jnp

from lscjax._src.quant.lloyd import lloyd, scalar_init
from lscjax._src.quant.options import bits_for, check_count, per_leaf
from lscjax._src.quant.qarray import QArray, code_dtype
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves


def residual_leaf(w, k: int, stages: int, *, iters: int) -> QArray:
    """One weight array as a "residual" QArray (see `residual`)."""
    w = jnp.asarray(w, jnp.float32)
    rest = w.reshape(-1)
    valid = jnp.ones(rest.shape, bool)
    codes, codebooks = [], []
    for _ in range(stages):
        start = scalar_init(rest, valid, jax.random.key(0), k=k, method="linear")
        centroids, assignment, _ = lloyd(rest[:, None], valid, start[:, None], iters=iters)
        rest = rest - centroids[assignment, 0]
        codes.append(assignment.astype(code_dtype(k)).reshape(w.shape))
        codebooks.append(centroids[:, 0])
    return QArray(jnp.stack(codes), jnp.stack(codebooks), "residual", bits_for(k), tuple(w.shape))


def residual(params, k, stages, *, iters: int = 30, where: Where = None):
    """Residual quantization of the selected weights (Gong et al. 2014), per weight (scalar).

    Stage 1 clusters the weights into k centroids (scalar k-means, linear init); stage t clusters
    the residual left by stages 1..t-1. The dense weight is the sum of the stages' centroids.
    Storage: ``stages * size * ceil(log2 k)`` code bits + ``32 * stages * k`` codebook bits.

    Args:
      params: pytree of float arrays.
      k: centroids per stage, an int in [1, 65536] or a {path: k} map.
      stages: number of stages >= 1, an int or a {path: stages} map.
      iters: Lloyd iterations per stage.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      The params with a "residual" QArray at every selected leaf (codes uint8/uint16
      [stages, *shape], codebook float32 [stages, k]); other leaves unchanged.

    Raises:
      LscError (a ValueError): k < 1 or > 65536, stages < 1, a leaf that is not floating point
        (names the leaf path).
    """
    for path, leaf in selected_leaves(params, where):
        check_float_leaf(path, leaf)
        check_count(path, per_leaf(k, path, "k"))
        check_count(path, per_leaf(stages, path, "stages"), "stages", most=64)

    def one(path, w):
        leaf_k, leaf_stages = per_leaf(k, path, "k"), per_leaf(stages, path, "stages")
        return residual_leaf(w, leaf_k, leaf_stages, iters=iters)

    return map_selected(one, params, where=where, fill="keep")
