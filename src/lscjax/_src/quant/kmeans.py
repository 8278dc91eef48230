"""Deep Compression's trained quantization: per-layer scalar k-means weight sharing.

Each selected layer's non-zero weights are clustered by Lloyd's algorithm (`lloyd.lloyd`, jitted)
run to convergence; pruned zeros are left out of the clustering and keep code 0, whose codebook
entry is exactly 0.0. Per-weight importance weights (e.g. a Hessian diagonal, as in SqueezeLLM)
make the centroids weighted means. With ``per_channel`` every output channel (the last axis) gets
its own codebook, clustered from that channel's weights alone (SqueezeLLM's per-channel
non-uniform codebooks), all channels in one vectorized Lloyd run.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.parallel import row_spans, shared_map
from lscjax._src.quant.lloyd import INITS, lloyd, scalar_init, sorted_lloyd
from lscjax._src.quant.options import per_leaf
from lscjax._src.quant.qarray import QArray, check_bits, code_dtype
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves, selection

SAMPLE_POINTS = 2**16
"""A layer of more elements is clustered on the host: Lloyd on its non-zero weights only (all of
them, or, when it has more, a deterministic sample of this many plus its smallest and largest;
`lloyd.sorted_lloyd`), then every weight is assigned its nearest centroid (benchmarks/scale.py measures the distortion
the sample costs)."""
DEFAULT_INIT = "linear"
MAX_ITERS = 1000
TOL = 1e-6


def sample_index(kept: np.ndarray) -> np.ndarray:
    """Positions int64 [<= SAMPLE_POINTS + 2] of the values `kept` float [m] that Lloyd runs on:
    all of them, or a deterministic sample of SAMPLE_POINTS plus the smallest and largest."""
    if kept.size <= SAMPLE_POINTS:
        return np.arange(kept.size)
    sample = np.random.default_rng(0).choice(kept.size, SAMPLE_POINTS, replace=False)
    return np.concatenate([np.sort(sample), [np.argmin(kept), np.argmax(kept)]])


def _sampled_leaf(
    w: np.ndarray, bits: int, *, init: str, iters: int, key, tol: float, weights
) -> QArray:
    """`kmeans_leaf` of a layer with more than SAMPLE_POINTS elements, on the host: Lloyd on
    its non-zeros or a sample of them (`sorted_lloyd`, nothing compiled), then the nearest
    centroid of each weight by binary search, in slices (`parallel.shared_map`)."""
    values = np.asarray(w, np.float32).reshape(-1)
    spans = row_spans(values.size, 1)
    local = shared_map(lambda span: np.flatnonzero(values[span]), spans)  # per slice
    nonzero = np.concatenate([at + span.start for at, span in zip(local, spans, strict=True)])
    k = 2**bits - int(nonzero.size < values.size)
    kept = values[nonzero]
    if kept.size == 0:
        return QArray(
            jnp.zeros(w.shape, jnp.uint8), jnp.zeros((1,), jnp.float32), "kmeans", bits, w.shape
        )
    picked = sample_index(kept)
    points = kept[picked]
    sample_weights = None
    if weights is not None:
        importance = np.asarray(weights, np.float32).reshape(-1)[nonzero]
        sample_weights = importance[picked]
    if init == "linear":  # scalar_init's, without compiling for this sample size
        start = np.linspace(points.min(), points.max(), k, dtype=np.float32)
    elif init == "density":  # likewise
        ranks = np.round(np.linspace(0.0, 1.0, k) * (points.size - 1)).astype(np.int64)
        start = np.sort(points)[ranks]
    else:
        valid = jnp.ones(points.size, bool)
        start = np.asarray(scalar_init(jnp.asarray(points), valid, key, k=k, method=init))
    centroids = sorted_lloyd(points, start, iters=iters, tol=tol, weights=sample_weights)
    order = np.argsort(centroids, kind="stable")
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / np.float32(2)
    dtype = code_dtype(2**bits)
    codes = np.zeros(values.size, dtype)
    first = 2**bits - k  # 1 when code 0 is the pruned zero

    def assign(i: int) -> None:
        at, part = local[i], values[spans[i]]
        codes[spans[i]][at] = order[np.searchsorted(midpoints, part[at])] + first

    shared_map(assign, range(len(spans)))
    codebook = np.concatenate([np.zeros(first, np.float32), centroids])
    return QArray(
        jnp.asarray(codes.reshape(w.shape)), jnp.asarray(codebook), "kmeans", bits, tuple(w.shape)
    )


def kmeans_leaf(
    w, bits: int, *, init: str, iters: int, key, tol: float = TOL, weights=None
) -> QArray:
    """Scalar k-means of one weight array (see `kmeans`); returns a "kmeans" QArray.

    Args:
      w: float array of any shape.
      bits: bits per code.
      init, iters, tol: as in `kmeans`.
      key: PRNG key for the random inits.
      weights: optional float array shaped like `w` (>= 0), each weight's importance.
    """
    if np.size(w) > SAMPLE_POINTS:
        return _sampled_leaf(
            np.asarray(w), bits, init=init, iters=iters, key=key, tol=tol, weights=weights
        )
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
    point_weights = None if weights is None else jnp.asarray(weights, jnp.float32).reshape(-1)
    centroids, assignment, _ = lloyd(
        values[:, None], valid, start[:, None], iters=iters, tol=tol, weights=point_weights
    )
    codes = jnp.where(valid, assignment + int(has_zeros), 0).astype(code_dtype(2**bits))
    codebook = centroids[:, 0]
    if has_zeros:
        codebook = jnp.concatenate([jnp.zeros((1,), jnp.float32), codebook])
    return QArray(codes.reshape(w.shape), codebook, "kmeans", bits, tuple(w.shape))


@functools.partial(jax.jit, static_argnames=("k", "init", "iters"))
def _channel_lloyd(mat, weights, key, tol, *, k: int, init: str, iters: int):
    """Lloyd on each column of mat float32 [m, n] alone (its non-zeros), importance weights
    float32 [m, n]: (centroids float32 [n, k], assignment int32 [m, n]). A column without a
    non-zero gets centroids 0."""

    def one(col, imp, col_key):
        valid = col != 0
        start = scalar_init(col, valid, col_key, k=k, method=init)
        start = jnp.where(jnp.any(valid), start, 0.0)
        centroids, assignment, _ = lloyd(
            col[:, None], valid, start[:, None], iters=iters, tol=tol, weights=imp
        )
        return centroids[:, 0], assignment

    keys = jax.random.split(key, mat.shape[1])
    return jax.vmap(one, in_axes=(1, 1, 0), out_axes=(0, 1))(mat, weights, keys)


def channel_kmeans_leaf(
    w, bits: int, *, init: str, iters: int, key, tol: float = TOL, weights=None
) -> QArray:
    """Per-output-channel scalar k-means of one kernel (see `kmeans`'s `per_channel`).

    Args:
      w: float array of rank >= 2; channels are its last axis (n = ``shape[-1]``), each one's
        weights the ``size // n`` entries of its column in ``w.reshape(-1, n)``.
      bits, init, iters, key, tol: as in `kmeans_leaf`.
      weights: optional float array shaped like `w` (>= 0), each weight's importance.

    Returns:
      A "kmeans" QArray with codebook float32 [n, 2**bits]: when the kernel has an exact zero,
      entry 0 of every channel is 0.0 and code 0 marks exactly the zeros.
    """
    shape = tuple(np.shape(w))
    if len(shape) < 2:
        raise LscError(f"per-channel k-means needs a kernel of rank >= 2, got shape {shape}")
    mat = jnp.asarray(w, jnp.float32).reshape(-1, shape[-1])
    has_zeros = bool(jnp.any(mat == 0))
    importance = (
        jnp.ones(mat.shape, jnp.float32)
        if weights is None
        else jnp.asarray(weights, jnp.float32).reshape(mat.shape)
    )
    k = 2**bits - int(has_zeros)
    book, assignment = _channel_lloyd(
        mat, importance, key, jnp.float32(tol), k=k, init=init, iters=iters
    )
    codes = jnp.where(mat != 0, assignment + int(has_zeros), 0).astype(code_dtype(2**bits))
    if has_zeros:
        book = jnp.concatenate([jnp.zeros((mat.shape[1], 1), jnp.float32), book], axis=1)
    return QArray(codes.reshape(shape), book, "kmeans", bits, shape)


def check_weights(params, weights, where):
    """{path: importance array} for the selected leaves, checked; {} when `weights` is None."""
    if weights is None:
        return {}
    chosen = selection(params, where)
    given = dict(selected_leaves(weights, lambda p, _: chosen.get(p, False)))
    out = {}
    for path, leaf in selected_leaves(params, where):
        if path not in given:
            raise LscError(f"leaf {path!r}: weights= has no entry for this selected leaf")
        imp = np.asarray(given[path], np.float32)
        if imp.shape != np.shape(leaf):
            raise LscError(
                f"leaf {path!r}: weights of shape {imp.shape}, the leaf has {np.shape(leaf)}"
            )
        if not np.all(np.isfinite(imp)) or np.any(imp < 0):
            raise LscError(f"leaf {path!r}: weights must be finite and >= 0")
        out[path] = imp
    return out


def kmeans(
    params,
    bits,
    *,
    init: str = DEFAULT_INIT,
    iters: int = MAX_ITERS,
    tol: float = TOL,
    weights=None,
    per_channel: bool = False,
    where: Where = None,
    seed: int = 0,
):
    """Per-layer scalar k-means weight sharing (Han et al., Deep Compression, 2016).

    Every selected leaf becomes a "kmeans" `QArray` with at most ``2**bits`` codes. Only the
    non-zero weights are clustered: a layer with pruned zeros gets ``2**bits - 1`` centroids plus
    code 0 = exactly 0.0, so zeros stay zeros and the codes are sparse where the weights are.
    Lloyd's iterations run until the assignment stops changing or an iteration lowers the
    distortion by less than `tol` of its value, at most `iters` of them. A layer with more than
    SAMPLE_POINTS elements runs Lloyd on its non-zero weights alone (on a deterministic sample
    of SAMPLE_POINTS of them when it has more) and then assigns every weight to its nearest
    centroid.

    This is a host-level transform (it inspects the weights to find the zeros); the clustering
    itself is jitted and compiled once per (layer size, k, init, iters).

    Args:
      params: pytree of float arrays.
      bits: bits per code, an int in [1, 16] or a {path: bits} map (e.g. 8 for conv, 5 for fc).
      init: "linear" (the default, Deep Compression's: evenly between the min and max
        non-zero weight), "density" (evenly spaced in their CDF), "random" or "kmeans++". On
        transformer kernels "density" and "random" reach 1.3-1.6x less error at equal levels
        (benchmarks/kmeans_init.py) but make the codes near equiprobable, so their rANS stream
        costs more bits (docs/results/ptq.md).
      iters: the most Lloyd iterations.
      tol: relative distortion change that stops the iterations (0: only a fixed assignment, or
        `iters`, stops them).
      weights: optional pytree like `params` with a float array >= 0 of each selected leaf's
        shape: per-weight importance (e.g. the Hessian diagonal of each weight's input). The
        centroids are then weighted means, minimising the weighted squared error.
      per_channel: one codebook per output channel (the last axis, n = ``shape[-1]``), each
        clustered from its channel's non-zero weights alone (all channels in one vectorized,
        jitted Lloyd run, no sampling); the selected leaves must have rank >= 2. The
        codebooks cost n x 2**bits float32 entries instead of 2**bits.
      where: selection (default: 'kernel' leaves with ndim >= 2).
      seed: PRNG seed for the "random" and "kmeans++" inits (folded with the leaf index).

    Returns:
      The params with a QArray at every selected leaf (codes uint8, or uint16 for bits > 8;
      codebook float32 [2**bits], or [1] for an all-zero layer; per channel [n, 2**bits]);
      other leaves unchanged.

    Raises:
      LscError (a ValueError): bits outside [1, 16] or missing from the map, unknown init,
        iters < 0, tol < 0, weights missing or misshapen for a selected leaf, a selected leaf
        that is not floating point or holds NaN/Inf, per_channel on a leaf of rank < 2 (the
        message names the leaf path).

    Example:
      >>> bits = {"Conv_0/kernel": 8, "Conv_1/kernel": 8, "Dense_0/kernel": 5, "Dense_1/kernel": 5}
      >>> q = lscjax.quant.kmeans(params, bits)  # or one int for every selected leaf
      >>> dense = lscjax.quant.dequantize(q)
    """
    if init not in INITS:
        raise LscError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise LscError(f"iters must be an int >= 0, got {iters!r}")
    if not isinstance(tol, int | float) or not tol >= 0:
        raise LscError(f"tol must be a number >= 0, got {tol!r}")
    if not isinstance(per_channel, bool):
        raise LscError(f"per_channel must be True or False, got {per_channel!r}")
    leaves = selected_leaves(params, where)
    index = {}
    for i, (path, leaf) in enumerate(leaves):
        check_float_leaf(path, leaf)
        check_bits(path, per_leaf(bits, path, "bits"))
        if per_channel and np.ndim(leaf) < 2:
            raise LscError(
                f"leaf {path!r}: per_channel needs a kernel of rank >= 2, got {np.shape(leaf)}"
            )
        index[path] = i
    importance = check_weights(params, weights, where)
    key = jax.random.key(seed)

    def one(path, w):
        leaf_bits = per_leaf(bits, path, "bits")
        leaf_key = jax.random.fold_in(key, index[path])
        return (channel_kmeans_leaf if per_channel else kmeans_leaf)(
            w,
            leaf_bits,
            init=init,
            iters=iters,
            key=leaf_key,
            tol=float(tol),
            weights=importance.get(path),
        )

    return map_selected(one, params, where=where, fill="keep")
