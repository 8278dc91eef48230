"""Least-squares refit of pruned layers: for fixed masks, the kept weights that best reproduce
the dense layer's outputs on the calibration inputs.

For a kernel W [d, n] (its matrix view) with keep mask M and the damped Hessian
``A = H / s + lambda I`` of its calibration inputs (`hessian.damped`, as SparseGPT's), each
output channel j takes the v minimising ``(w_j - v)^T A (w_j - v)``, the output error
``||X w_j - X v||^2`` (scaled) plus a ridge towards the dense weights, with v = 0 off its kept
set S: the normal equations ``(A v)_S = (A w_j)_S``. SparseGPT's optimal brain surgeon updates
only move the weights of the features not yet visited, so for its own masks this exact
solution has a lower error (on all-MiniLM-L6-v2's layers at 50%, about a third lower).

All channels are solved at once by conjugate gradients on the masked system, with a Jacobi
preconditioner: one [d, d] @ [d, n] product per iteration, no factorisation per channel. Every
iteration lowers the objective, so the result is never worse than its start (SparseGPT's
compensated weights, or the dense weights masked).
"""

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.prune.hessian import check_damp, damped, matrix_view, stats_leaves
from lscjax._src.tree import Where, leaves_with_paths, map_selected

REFIT_ITERS = 100
"""Conjugate-gradient iterations at most (each one [d, d] @ [d, n] product)."""
REFIT_TOL = 1e-4
"""Stop when every channel's residual norm is below this fraction of its right-hand side's."""


@functools.partial(jax.jit, static_argnames=("iters",))
def conjugate_refit(a, rhs, keep, start, *, iters: int, tol: float = REFIT_TOL) -> jax.Array:
    """The masked least-squares weights float32 [d, n] by preconditioned conjugate gradients.

    Args:
      a: float32 [d, d], symmetric positive definite (the damped Hessian).
      rhs: float32 [d, n], the right-hand sides (``A w`` to reproduce the dense weights w).
      keep: bool [d, n], the kept weights; the result is exactly 0 elsewhere.
      start: float32 [d, n], the first iterate (masked before use).
      iters: the most iterations (static); tol: the relative residual at which to stop.

    Returns:
      float32 [d, n]: each column j approximately solves ``(A v)_S = (rhs_j)_S`` on its kept
      set S, v = 0 off it.
    """
    m = keep.astype(jnp.float32)
    b = m * rhs
    v = m * start
    r = b - m * (a @ v)
    inv_diag = m / jnp.diagonal(a)[:, None]
    z = inv_diag * r
    p = z
    rz = jnp.sum(r * z, axis=0)
    bound = tol * jnp.linalg.norm(b, axis=0)

    def cond(carry):
        t, _, r, _, _ = carry
        return (t < iters) & jnp.any(jnp.linalg.norm(r, axis=0) > bound)

    def body(carry):
        t, v, r, p, rz = carry
        ap = m * (a @ p)
        pap = jnp.sum(p * ap, axis=0)
        alpha = jnp.where(pap > 0, rz / jnp.where(pap > 0, pap, 1.0), 0.0)
        v = v + alpha * p
        r = r - alpha * ap
        z = inv_diag * r
        rz_next = jnp.sum(r * z, axis=0)
        beta = jnp.where(rz > 0, rz_next / jnp.where(rz > 0, rz, 1.0), 0.0)
        return t + 1, v, r, z + beta * p, rz_next

    _, v, *_ = jax.lax.while_loop(cond, body, (jnp.int32(0), v, r, p, rz))
    return m * v


def refit(
    params,
    masks,
    stats: Mapping,
    *,
    start=None,
    damp: float = 0.01,
    iters: int = REFIT_ITERS,
    where: Where = None,
):
    """The kept weights of pruned layers refit by least squares to the dense layers' outputs.

    For each selected kernel W (its matrix view [d, n], d = its stats' input features) and
    keep mask M, every output channel's kept weights minimise ``||X w - X v||^2`` on the
    calibration inputs X plus SparseGPT's damping ``damp * mean(diag(H)) * ||w - v||^2``, the
    pruned ones staying exactly 0 (see the module docstring). Works with any pruner's masks
    (`sparsegpt`, `wanda`, magnitude, n:m, blocks): the masks are not changed. Cost: at most
    `iters` products [d, d] @ [d, n] per layer (2 d^2 n flops each); on all-MiniLM-L6-v2's
    layers 25 iterations already reach the converged error to within about 1% (most to 0.1%).

    Args:
      params: the dense params (the weights whose outputs the refit layers reproduce).
      masks: pytree like `params` with a bool keep mask shaped like each kernel to refit
        (True = kept) and None elsewhere, as the pruners return.
      stats: {path: LayerStats} (from `lscjax.Calibration`) of the kernels to refit.
      start: optional params to start the iterations from (e.g. SparseGPT's compensated
        weights, which converge faster); default: `params` masked.
      damp: the damping, a fraction of the Hessian's mean diagonal, in [0, 1].
      iters: conjugate-gradient iterations at most, an int >= 1.
      where: the kernels to refit (default: every leaf with a mask).

    Returns:
      `params` with every refit kernel replaced (its dtype kept; pruned weights exactly 0).

    Raises:
      LscError (a ValueError): bad damp or iters, a selected leaf without a mask or stats, a
        mask not shaped like its kernel, an empty selection (messages name the path).

    Example:
      >>> stats = lscjax.Calibration(apply_fn, [images]).stats(params)
      >>> pruned, masks = lscjax.prune.wanda(params, stats, 0.5)
      >>> pruned = lscjax.prune.refit(params, masks, stats, start=pruned)
    """
    damp = check_damp(damp)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise LscError(f"iters must be an int >= 1, got {iters!r}")
    keep = {p: m for p, m in leaves_with_paths(masks) if m is not None}
    chosen = (lambda p, _: p in keep) if where is None else where
    starts = dict(leaves_with_paths(start)) if start is not None else {}
    done = {}
    for path, w, s in stats_leaves(params, stats, chosen):
        if path not in keep:
            raise LscError(f"leaf {path!r}: no keep mask in masks to refit with")
        if np.shape(keep[path]) != np.shape(w):
            raise LscError(
                f"leaf {path!r}: mask shape {np.shape(keep[path])} is not the kernel's "
                f"{np.shape(w)}"
            )
        d = int(np.shape(s.gram)[0])
        mat = matrix_view(path, w, d, layout=False)
        first = matrix_view(path, starts.get(path, w), d, layout=False)
        m = jnp.asarray(keep[path], bool).reshape(mat.shape)
        a = damped(jnp.asarray(s.gram, jnp.float32), damp)
        out = conjugate_refit(a, a @ mat, m, first, iters=iters)
        done[path] = out.reshape(np.shape(w)).astype(jnp.result_type(w))
    return map_selected(lambda p, _: done[p], params, where=lambda p, _: p in done, fill="keep")
