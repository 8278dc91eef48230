"""Layer statistics from calibration data and the OBS column sweep of SparseGPT and GPTQ.

A layer y = x W with kernel W viewed as the matrix [d, n] (d input features: a Dense kernel's
rows, a Conv kernel's kh * kw * cin patch features) sees inputs X [N, d]. Its reconstruction
error for a changed kernel W' is ``||X W - X W'||^2 = tr((W - W')^T H (W - W'))`` with the
Hessian ``H = X^T X``. SparseGPT and GPTQ (Frantar & Alistarh 2023; Frantar et al. 2023) walk
the input features in order, fix feature i (prune or quantize its row of W) and move the
remaining rows by the optimal brain surgeon update ``-err_i U[i, i:]``, where U is the upper
Cholesky factor of the damped inverse Hessian and ``err_i = (w_i - q_i) / U[i, i]``. Updates
are applied lazily in batches of `block` features (one matmul per batch for the rest).

Here the sweep runs on the transposed kernel Wt [n, d] (a row per output channel), as in the
papers' code.
"""

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.tree import Where, check_float_leaf, selected_leaves


class LayerStats(NamedTuple):
    """Calibration statistics of one layer's inputs X [N, d] (never stored themselves).

    Attributes:
      gram: float32 [d, d], ``X^T X`` accumulated in float32.
      norms: float32 [d], the L2 norm of each input feature over the N rows (Wanda's ||X_j||).
      count: int, N (rows seen: tokens, pixels of the output map, samples).
      cross: float32 [d, d] ``X^T X_dense`` or None: with X_dense the same layer's inputs in
        the uncompressed model on the same rows (`Calibration.sequential(..., cross=True)`).
    """

    gram: jax.Array
    norms: jax.Array
    count: int
    cross: jax.Array | None = None


def check_damp(damp) -> float:
    """Raise LscError unless damp is a number in [0, 1]; return it."""
    if isinstance(damp, bool) or not isinstance(damp, int | float) or not 0 <= damp <= 1:
        raise LscError(f"damp must be a number in [0, 1], got {damp!r}")
    return float(damp)


def check_block_size(block_size) -> int:
    """Raise LscError unless block_size is an int >= 1; return it."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise LscError(f"block_size must be an int >= 1, got {block_size!r}")
    return block_size


def stats_leaves(params, stats: Mapping, where: Where) -> list[tuple[str, jax.Array, LayerStats]]:
    """The selected (path, kernel, stats) triples; where=None selects the leaves `stats` covers.

    Raises:
      LscError: `stats` is not a mapping; a selected leaf without stats, not floating, not
        finite, or whose leading axes do not multiply to its stats' d; an empty selection.
    """
    if not isinstance(stats, Mapping):
        raise LscError(f"stats must be a {{path: LayerStats}} mapping, got {type(stats).__name__}")
    chosen = (lambda p, _: p in stats) if where is None else where
    out = []
    for path, w in selected_leaves(params, chosen):
        if path not in stats:
            raise LscError(f"leaf {path!r}: no calibration stats (stats has {sorted(stats)[:5]})")
        check_float_leaf(path, w)
        s = stats[path]
        d = int(np.shape(s.gram)[0])
        prefixes = np.cumprod(np.shape(w)[:-1]) if np.ndim(w) >= 2 else []
        if np.shape(s.gram) != (d, d) or d not in prefixes:
            raise LscError(
                f"leaf {path!r}: shape {np.shape(w)} does not match stats of {d} input features"
            )
        out.append((path, w, s))
    return out


def matrix_view(path: str, w, d: int, *, layout: bool) -> jax.Array:
    """The kernel as float32 [d, n]; with `layout`, also required to equal the BlockSparse view
    ``w.reshape(-1, w.shape[-1])`` (input axes first, one output axis).

    Raises:
      LscError: `layout` and the two views differ (names `path`).
    """
    w = jnp.asarray(w, jnp.float32)
    if layout and w.size // w.shape[-1] != d:
        raise LscError(
            f"leaf {path!r}: shape {w.shape} has {d} input features but the matrix view "
            f"kernel.reshape(-1, {w.shape[-1]}) has {w.size // w.shape[-1]} rows; block patterns "
            "and per-channel grids need the input axes first and one output axis"
        )
    return w.reshape(d, -1)


@jax.jit
def damped(gram: jax.Array, damp: float | jax.Array) -> jax.Array:
    """The damped Hessian ``H / s + lambda I`` float32 [d, d] (s: the mean diagonal) that the
    OBS updates use.

    Args:
      gram: float32 [d, d], H = X^T X. Dead features (zero diagonal) get H_ii = 1.
      damp: lambda, a fraction of the mean diagonal.
    """
    h = gram.astype(jnp.float32)
    dead = jnp.diagonal(h) <= 0
    h = jnp.where(jnp.eye(h.shape[0], dtype=bool) & dead[:, None], 1.0, h)
    return h / gram_scale(gram) + damp * jnp.eye(h.shape[0], dtype=jnp.float32)


def gram_scale(gram: jax.Array) -> jax.Array:
    """s, the mean diagonal of H float32 [d, d] (a dead feature's counted as 1) by which
    `damped` divides it."""
    diag = jnp.diagonal(gram.astype(jnp.float32))
    return jnp.mean(jnp.where(diag <= 0, 1.0, diag))


def inverse_factor(gram: jax.Array, damp: float | jax.Array) -> jax.Array:
    """Upper Cholesky factor U of the damped inverse Hessian, ``U^T U = damped(H)^-1``.

    Args:
      gram: float32 [d, d], H = X^T X.
      damp: lambda as a fraction of the mean diagonal (see `damped`).

    Returns:
      float32 [d, d], upper triangular.
    """
    h = damped(gram, damp)
    lower = jnp.linalg.cholesky(h)
    inv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=jnp.float32))
    return jnp.linalg.cholesky(inv).T


def lazy_block(block_size: int, d: int, multiple: int) -> int:
    """The lazy batch width: `block_size` (at most d) rounded up to a multiple of `multiple`."""
    width = min(block_size, d)
    return -(-width // multiple) * multiple


def padded(wt: jax.Array, u: jax.Array, block: int, rows: int = 1):
    """Wt [n, d] and U [d, d] padded to d a multiple of `block` (zero weights, identity factor)
    and n a multiple of `rows` (zero weights)."""
    n, d = wt.shape
    pd, pn = -d % block, -n % rows
    wt = jnp.pad(wt, ((0, pn), (0, pd)))
    u = jnp.pad(u, ((0, pd), (0, pd))) + jnp.diag(jnp.arange(d + pd) >= d).astype(jnp.float32)
    return wt, u


def lazy_sweep(wt: jax.Array, u: jax.Array, aux, *, block: int, start: Callable, column: Callable):
    """The OBS sweep over the features of Wt, in lazy batches of `block` (traced code).

    Args:
      wt: float32 [n, dp], dp a multiple of `block`.
      u: float32 [dp, dp], the upper inverse-Hessian factor (see `inverse_factor`).
      aux: the caller's carry (any pytree), threaded through `start` and `column`.
      block: features per lazy batch.
      start: ``(w1 [n, block], diag1 [block], i1, aux) -> aux`` at each batch start.
      column: ``(w1, i, i1 + i, diag1, aux) -> (q [n], aux)``: the fixed value of feature i.

    Returns:
      (Wt with every feature fixed and compensated, float32 [n, dp], aux).
    """
    n, dp = wt.shape

    def one_block(bi, carry):
        wt, aux = carry
        i1 = bi * block
        w1 = jax.lax.dynamic_slice(wt, (0, i1), (n, block))
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (block, block))
        diag1 = jnp.diagonal(u1)
        aux = start(w1, diag1, i1, aux)

        def one_column(i, carry):
            w1, err1, aux = carry
            w = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
            q, aux = column(w1, i, i1 + i, diag1, aux)
            err = (w - q) / diag1[i]
            w1 = w1 - err[:, None] * jax.lax.dynamic_index_in_dim(u1, i, axis=0)
            w1 = jax.lax.dynamic_update_index_in_dim(w1, q, i, axis=1)
            err1 = jax.lax.dynamic_update_index_in_dim(err1, err, i, axis=1)
            return w1, err1, aux

        w1, err1, aux = jax.lax.fori_loop(0, block, one_column, (w1, jnp.zeros_like(w1), aux))
        wt = wt - err1 @ jax.lax.dynamic_slice(u, (i1, 0), (block, dp))
        return jax.lax.dynamic_update_slice(wt, w1, (0, i1)), aux

    return jax.lax.fori_loop(0, dp // block, one_block, (wt, aux))
