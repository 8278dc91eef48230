"""Product quantization (Gong et al. 2014): k-means of row segments, one codebook per segment."""

import functools

import jax
import jax.numpy as jnp

from lscjax._src.quant.lloyd import lloyd
from lscjax._src.quant.options import bits_for, check_count, check_sub_dim, per_leaf
from lscjax._src.quant.qarray import QArray, code_dtype
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def cluster_segments(segments: jax.Array, key: jax.Array, *, k: int, iters: int):
    """k-means of each segment's sub-vectors, all segments at once.

    Args:
      segments: float32 [s, m, sub_dim]: the m sub-vectors of each of the s segments.
      key: PRNG key for the initial centroids (k random rows per segment; distinct when k <= m).
      k, iters: centroids per segment and Lloyd iterations (static).

    Returns:
      (centroids float32 [s, k, sub_dim], assignment int32 [s, m]).
    """
    s, m, _ = segments.shape
    starts = jax.vmap(lambda kk: jax.random.choice(kk, m, (k,), replace=k > m))(
        jax.random.split(key, s)
    )
    init = jnp.take_along_axis(segments, starts[:, :, None], axis=1)
    valid = jnp.ones((m,), bool)
    centroids, assignment, _ = jax.vmap(lambda x, c: lloyd(x, valid, c, iters=iters))(
        segments, init
    )
    return centroids, assignment


def product_leaf(w, k: int, sub_dim: int, *, iters: int, key) -> QArray:
    """One weight array as a "product" QArray (see `product`)."""
    w = jnp.asarray(w, jnp.float32)
    m, n = int(w.size // w.shape[-1]), w.shape[-1]
    segments = w.reshape(m, n // sub_dim, sub_dim).transpose(1, 0, 2)  # [s, m, sub_dim]
    centroids, assignment = cluster_segments(segments, key, k=k, iters=iters)
    codes = assignment.T.astype(code_dtype(k))  # [m, s]
    return QArray(codes, centroids, "product", bits_for(k), tuple(w.shape))


def product(params, k, sub_dim, *, iters: int = 30, where: Where = None, seed: int = 0):
    """Product quantization of the selected weights (Gong et al. 2014).

    Each leaf's 2-D view [m, n] (rows = all leading axes, n = ``shape[-1]``; for a Flax Dense
    kernel [in, out], a row is one input unit's fan-out) is cut into ``s = n / sub_dim`` column
    segments; the m sub-vectors of each segment are clustered into k centroids by Lloyd's
    algorithm (random distinct rows as the initial centroids). Storage: ``m * s * ceil(log2 k)``
    code bits + ``32 * k * n`` codebook bits.

    Args:
      params: pytree of float arrays.
      k: centroids per segment, an int in [1, 65536] or a {path: k} map.
      sub_dim: sub-vector length, dividing ``shape[-1]``; an int or a {path: sub_dim} map.
      iters: Lloyd iterations.
      where: selection (default: 'kernel' leaves with ndim >= 2).
      seed: PRNG seed for the initial centroids (folded with the leaf index).

    Returns:
      The params with a "product" QArray at every selected leaf (codes uint8/uint16 [m, s],
      codebook float32 [s, k, sub_dim]); other leaves unchanged.

    Raises:
      LscError (a ValueError): k < 1 or > 65536, sub_dim < 1 or not dividing the row length, a
        leaf that is not floating point (all name the leaf path).
    """
    leaves = selected_leaves(params, where)
    index = {}
    for i, (path, leaf) in enumerate(leaves):
        check_float_leaf(path, leaf)
        check_count(path, per_leaf(k, path, "k"))
        check_sub_dim(path, leaf, sub_dim)
        index[path] = i
    key = jax.random.key(seed)

    def one(path, w):
        leaf_key = jax.random.fold_in(key, index[path])
        leaf_k, leaf_d = per_leaf(k, path, "k"), per_leaf(sub_dim, path, "sub_dim")
        return product_leaf(w, leaf_k, leaf_d, iters=iters, key=leaf_key)

    return map_selected(one, params, where=where, fill="keep")
