"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon updates.

The features of each layer are visited in order (`hessian.lazy_sweep`); at the start of every
lazy batch of `block_size` features the mask of the batch is chosen by the OBS saliency
``w^2 / U_ii^2`` (unstructured: the lowest fraction of the batch; blocks: whole tiles by their
summed saliency), for "n:m" at the start of every group of m features, and the kept weights
absorb the error of the pruned ones. The masks are then what `lscjax.prune.apply` and the
block-sparse layout take.
"""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.prune.hessian import (
    check_block_size,
    check_damp,
    inverse_factor,
    lazy_block,
    lazy_sweep,
    matrix_view,
    padded,
    stats_leaves,
)
from lscjax._src.prune.magnitude import check_sparsity
from lscjax._src.prune.patterns import Pattern, check_fits, parse_pattern
from lscjax._src.tree import Where, map_selected


def _lowest(score: jax.Array, count: jax.Array) -> jax.Array:
    """Bool mask of the `count` lowest scores (any shape; ties: lower flat index first)."""
    flat = score.reshape(-1)
    rank = jnp.argsort(jnp.argsort(flat, stable=True), stable=True)
    return (rank < count).reshape(score.shape)


def _pruned_count(valid: jax.Array, sparsity: float) -> jax.Array:
    real = jnp.sum(valid).astype(jnp.float32)
    return real - jnp.round(real * (1.0 - sparsity))


@functools.partial(jax.jit, static_argnames=("block", "pattern", "sparsity", "n", "d"))
def prune_sweep(wt, u, *, block: int, pattern: Pattern, sparsity: float, n: int, d: int):
    """SparseGPT on one padded layer.

    Args:
      wt: float32 [np_, dp], the transposed kernel padded (see `hessian.padded`).
      u: float32 [dp, dp], the padded inverse-Hessian factor.
      block, pattern, sparsity: the lazy batch width (a multiple of m or b0), pattern, sparsity.
      n, d: the real numbers of outputs and input features.

    Returns:
      (pruned and compensated Wt float32 [np_, dp], keep bool [np_, dp]).
    """
    rows, dp = wt.shape
    row_ok = jnp.arange(rows) < n

    def start(w1, diag1, i1, keep):
        if pattern.kind == "nm":
            return keep
        score = w1**2 / diag1[None, :] ** 2
        col_ok = i1 + jnp.arange(block) < d
        if pattern.kind == "unstructured":
            valid = row_ok[:, None] & col_ok[None, :]
            pruned = _lowest(jnp.where(valid, score, jnp.inf), _pruned_count(valid, sparsity))
        else:
            b0, b1 = pattern.b0, pattern.b1
            tiles = score.reshape(rows // b1, b1, block // b0, b0).sum(axis=(1, 3))
            valid = jnp.broadcast_to(col_ok[::b0][None, :], tiles.shape)
            gone = _lowest(jnp.where(valid, tiles, jnp.inf), _pruned_count(valid, sparsity))
            pruned = jnp.repeat(jnp.repeat(gone, b1, axis=0), b0, axis=1)
        return jax.lax.dynamic_update_slice(keep, ~pruned, (0, i1))

    def column(w1, i, gi, diag1, keep):
        if pattern.kind == "nm":
            m = pattern.m
            group = jax.lax.dynamic_slice(w1, (0, i), (rows, m))
            score = group**2 / jax.lax.dynamic_slice(diag1, (i,), (m,))[None, :] ** 2
            order = jnp.argsort(-score, axis=1, stable=True)
            kept = jnp.argsort(order, axis=1, stable=True) < pattern.n
            updated = jax.lax.dynamic_update_slice(keep, kept, (0, gi))
            keep = jnp.where(i % m == 0, updated, keep)
        w = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        kept_col = jax.lax.dynamic_index_in_dim(keep, gi, axis=1, keepdims=False)
        return jnp.where(kept_col, w, 0.0), keep

    keep = jnp.ones((rows, dp), bool)
    return lazy_sweep(wt, u, keep, block=block, start=start, column=column)


def sparsegpt_leaf(path: str, w, stats, sparsity: float, pattern: Pattern, block_size, damp):
    """(pruned and compensated kernel, keep mask) of one layer; see `sparsegpt`."""
    d = int(stats.gram.shape[0])
    check_fits(path, pattern, d)
    mat = matrix_view(path, w, d, layout=pattern.kind == "block")
    n = mat.shape[1]
    multiple = {"nm": pattern.m, "block": pattern.b0}.get(pattern.kind, 1)
    block = lazy_block(block_size, d, multiple)
    u = inverse_factor(jnp.asarray(stats.gram, jnp.float32), damp)
    wt, u = padded(mat.T, u, block, pattern.b1 if pattern.kind == "block" else 1)
    out, keep = prune_sweep(wt, u, block=block, pattern=pattern, sparsity=sparsity, n=n, d=d)
    shape, dtype = np.shape(w), jnp.result_type(w)
    return out[:n, :d].T.reshape(shape).astype(dtype), keep[:n, :d].T.reshape(shape)


def sparsegpt(
    params,
    stats: Mapping,
    sparsity: float,
    *,
    pattern=None,
    block_size: int = 128,
    damp: float = 0.01,
    where: Where = None,
):
    """SparseGPT one-shot pruning of the calibrated layers (Frantar & Alistarh 2023).

    Each layer's kernel W [d, n] (the matrix view; d = its stats' input features) is pruned to
    `sparsity` while the kept weights are moved to minimise ``||X W - X W'||`` on the
    calibration inputs X, using the Hessian ``H = X^T X`` damped by ``damp * mean(diag(H))``:
    the features are visited in order, in lazy batches of `block_size`, each pruned weight's
    error spread over the not yet visited features by the optimal brain surgeon update.

    Args:
      params: pytree of float arrays (kernels: Dense [d, n], Conv [kh, kw, cin, n] with
        d = kh * kw * cin, DenseGeneral with its input axes first).
      stats: {path: LayerStats} (from `lscjax.Calibration`), one per pruned kernel.
      sparsity: fraction removed, in [0, 1): per lazy batch for unstructured and block
        patterns (so per layer too), per group for "n:m" (which ignores it: n of m are kept).
      pattern: None (unstructured), "n:m" (n kept of every m consecutive input features) or
        (b0, b1): whole b0 x b1 tiles (b0 input features x b1 outputs) of the matrix view
        ``kernel.reshape(-1, n)``, the BlockSparse layout's blocks (the lazy batch is then a
        multiple of b0).
      block_size: features per lazy batch (rounded up to a multiple of m or b0).
      damp: the damping, a fraction of the Hessian's mean diagonal, in [0, 1].
      where: the leaves to prune (default: every leaf that `stats` has).

    Returns:
      (params with the selected kernels pruned and compensated, masks): masks are bool arrays
      shaped like the kernels (True = kept), None elsewhere; pruned weights are exactly 0.

    Raises:
      LscError (a ValueError): bad sparsity, pattern, block_size or damp; a selected leaf
        without stats or not matching them, an m that does not divide d, a block pattern on a
        kernel whose matrix view is not [d, n]; an empty selection (messages name the path).

    Example:
      >>> stats = lscjax.Calibration(apply_fn, [images]).stats(params)
      >>> pruned, masks = lscjax.prune.sparsegpt(params, stats, 0.5)
    """
    sparsity = check_sparsity(sparsity)
    pattern = parse_pattern(pattern)
    block_size = check_block_size(block_size)
    damp = check_damp(damp)
    leaves = stats_leaves(params, stats, where)
    done = {
        path: sparsegpt_leaf(path, w, s, sparsity, pattern, block_size, damp)
        for path, w, s in leaves
    }
    pick = lambda p, _: p in done  # noqa: E731
    pruned = map_selected(lambda p, _: done[p][0], params, where=pick, fill="keep")
    return pruned, map_selected(lambda p, _: done[p][1], params, where=pick)
