"""Deep Compression's trained quantization: per-layer scalar k-means weight sharing.

Each selected layer's non-zero weights are clustered by Lloyd's algorithm (`lloyd.lloyd`, jitted);
pruned zeros are left out of the clustering and keep code 0, whose codebook entry is exactly 0.0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.quant.lloyd import INITS, lloyd, scalar_init
from lscjax._src.quant.options import per_leaf
from lscjax._src.quant.qarray import QArray, check_bits, code_dtype
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves

SAMPLE_POINTS = 2**16
"""A layer with more non-zero weights fits its codebook on a deterministic sample of this many
of them plus its smallest and largest, then assigns every weight to its nearest centroid
(benchmarks/scale.py measures the distortion this costs)."""
_CHUNK = 1 << 22


def _sampled_leaf(w: np.ndarray, bits: int, *, init: str, iters: int, key) -> QArray:
    """`kmeans_leaf` of a layer with more than SAMPLE_POINTS non-zeros, on the host: Lloyd on
    the sample (jitted), then the nearest centroid of each weight by binary search, in chunks."""
    values = np.asarray(w, np.float32).reshape(-1)
    nonzero = np.flatnonzero(values)
    k = 2**bits - int(nonzero.size < values.size)
    picked = np.sort(np.random.default_rng(0).choice(nonzero.size, SAMPLE_POINTS, replace=False))
    kept = values[nonzero]
    points = np.concatenate([kept[picked], [kept.min(), kept.max()]])
    valid = jnp.ones(points.size, bool)
    start = scalar_init(jnp.asarray(points), valid, key, k=k, method=init)
    centroids = np.asarray(lloyd(points[:, None], valid, start[:, None], iters=iters)[0][:, 0])
    order = np.argsort(centroids, kind="stable")
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / np.float32(2)
    dtype = code_dtype(2**bits)
    codes = np.zeros(values.size, dtype)
    first = 2**bits - k  # 1 when code 0 is the pruned zero
    for start_at in range(0, kept.size, _CHUNK):
        part = slice(start_at, start_at + _CHUNK)
        codes[nonzero[part]] = order[np.searchsorted(midpoints, kept[part])] + first
    codebook = np.concatenate([np.zeros(first, np.float32), centroids])
    return QArray(
        jnp.asarray(codes.reshape(w.shape)), jnp.asarray(codebook), "kmeans", bits, tuple(w.shape)
    )


def kmeans_leaf(w, bits: int, *, init: str, iters: int, key) -> QArray:
    """Scalar k-means of one weight array (see `kmeans`); returns a "kmeans" QArray."""
    if np.count_nonzero(np.asarray(w)) > SAMPLE_POINTS:
        return _sampled_leaf(np.asarray(w), bits, init=init, iters=iters, key=key)
    w = jnp.asarray(w, jnp.float32)
    values = w.reshape(-1)
    valid = values != 0
    n_valid = int(jnp.sum(valid))
    has_zeros = n_valid < values.size
    k = 2**bits - int(has_zeros)
    if n_valid == 0:
        return QArray(
            jnp.zeros(w.shape, jnp.uint8), jnp.zeros((1,), jnp.float32), "kmeans", bits, w.shape
        )
    start = scalar_init(values, valid, key, k=k, method=init)
    centroids, assignment, _ = lloyd(values[:, None], valid, start[:, None], iters=iters)
    codes = jnp.where(valid, assignment + int(has_zeros), 0).astype(code_dtype(2**bits))
    codebook = centroids[:, 0]
    if has_zeros:
        codebook = jnp.concatenate([jnp.zeros((1,), jnp.float32), codebook])
    return QArray(codes.reshape(w.shape), codebook, "kmeans", bits, tuple(w.shape))


def kmeans(
    params, bits, *, init: str = "linear", iters: int = 30, where: Where = None, seed: int = 0
):
    """Per-layer scalar k-means weight sharing (Han et al., Deep Compression, 2016).

    Every selected leaf becomes a "kmeans" `QArray` with at most ``2**bits`` codes. Only the
    non-zero weights are clustered: a layer with pruned zeros gets ``2**bits - 1`` centroids plus
    code 0 = exactly 0.0, so zeros stay zeros and the codes are sparse where the weights are. The
    centroids are the k-means centroids of the non-zero weights after `iters` Lloyd iterations;
    a layer with more than SAMPLE_POINTS non-zeros fits them on a deterministic sample of its
    weights and assigns every weight to its nearest centroid.

    This is a host-level transform (it inspects the weights to find the zeros); the clustering
    itself is jitted and compiled once per (layer size, k, init, iters).

    Args:
      params: pytree of float arrays.
      bits: bits per code, an int in [1, 16] or a {path: bits} map (e.g. 8 for conv, 5 for fc).
      init: "linear" (Deep Compression's: evenly between the min and max non-zero weight),
        "density", "random" or "kmeans++".
      iters: Lloyd iterations.
      where: selection (default: 'kernel' leaves with ndim >= 2).
      seed: PRNG seed for the "random" and "kmeans++" inits (folded with the leaf index).

    Returns:
      The params with a QArray at every selected leaf (codes uint8, or uint16 for bits > 8;
      codebook float32 [2**bits], or [1] for an all-zero layer); other leaves unchanged.

    Raises:
      LscError (a ValueError): bits outside [1, 16] or missing from the map, unknown init,
        iters < 0, a selected leaf that is not floating point or holds NaN/Inf (the message
        names the leaf path).

    Example:
      >>> bits = {"Conv_0/kernel": 8, "Conv_1/kernel": 8, "Dense_0/kernel": 5, "Dense_1/kernel": 5}
      >>> q = lscjax.quant.kmeans(params, bits)  # or one int for every selected leaf
      >>> dense = lscjax.quant.dequantize(q)
    """
    if init not in INITS:
        raise LscError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise LscError(f"iters must be an int >= 0, got {iters!r}")
    leaves = selected_leaves(params, where)
    index = {}
    for i, (path, leaf) in enumerate(leaves):
        check_float_leaf(path, leaf)
        check_bits(path, per_leaf(bits, path, "bits"))
        index[path] = i
    key = jax.random.key(seed)

    def one(path, w):
        leaf_bits = per_leaf(bits, path, "bits")
        leaf_key = jax.random.fold_in(key, index[path])
        return kmeans_leaf(w, leaf_bits, init=init, iters=iters, key=leaf_key)

    return map_selected(one, params, where=where, fill="keep")
