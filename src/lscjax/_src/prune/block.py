"""Block magnitude pruning and N:M (n of every m) pruning: structured masks for sparse kernels."""

import jax
import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.prune.magnitude import check_sparsity, keep_count, topk_mask
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves

_REDUCE = {
    "l2": lambda a: jnp.sqrt(jnp.sum(a * a, axis=(1, 3))),
    "l1": lambda a: jnp.sum(a, axis=(1, 3)),
    "max": lambda a: jnp.max(a, axis=(1, 3)),
}


def block_scores(w: jnp.ndarray, block: tuple[int, int], reduce: str = "l2") -> jnp.ndarray:
    """Score of each b0 x b1 tile of `w` viewed as a matrix [prod(shape[:-1]), shape[-1]].

    Tiles start at (0, 0), the layout of the block-sparse inference format; edge tiles of a
    matrix whose sides are not multiples of the block are zero-padded (so they score lower
    under "l1"/"l2").

    Args:
      w: float array [..., n] (ndim >= 2); a conv kernel [kh, kw, cin, cout] is the matrix
        [kh * kw * cin, cout].
      block: (b0, b1) tile shape.
      reduce: "l2" (Frobenius norm of the tile), "l1" (sum of ``|w|``) or "max" (largest ``|w|``).

    Returns:
      float array [ceil(rows / b0), ceil(cols / b1)].
    """
    b0, b1 = block
    mat = jnp.abs(w.reshape(-1, w.shape[-1])).astype(jnp.float32)
    rows, cols = mat.shape
    pad = ((0, -rows % b0), (0, -cols % b1))
    tiles = jnp.pad(mat, pad).reshape((rows + pad[0][1]) // b0, b0, (cols + pad[1][1]) // b1, b1)
    return _REDUCE[reduce](tiles)


def block_magnitude(
    params,
    sparsity: float,
    *,
    block: tuple[int, int] = (4, 4),
    reduce: str = "l2",
    balanced: bool = False,
    where: Where = None,
):
    """Masks that keep whole b0 x b1 blocks: the highest-scoring ``round(n_blocks * (1 - s))``.

    With `balanced`, every output block column keeps the same number of blocks, its own
    highest-scoring ``round(n_row_blocks * (1 - s))`` (balanced sparsity, Yao et al. 2019): the
    rows of the BlockSparse layout then have equal length, so the padded layout carries no
    padding and `lscjax.sparse.matmul` does no wasted work.

    At least one block is kept per leaf (per output block column with `balanced`): where the
    rounding would keep none (a leaf of 5 input blocks at 90% sparsity: ``round(0.5) = 0``), one
    is kept, so that no selected layer is pruned to zero and its outputs stay connected; such a
    leaf ends below `sparsity` (`lscjax.prune.sparsity` reports what was reached).

    Args:
      params: pytree of arrays.
      sparsity: fraction of blocks removed per selected leaf, in [0, 1).
      block: (b0, b1) tile shape over the matrix [prod(shape[:-1]), shape[-1]] (see
        `block_scores`), aligned with the BlockSparse inference layout.
      reduce: block score: "l2", "l1" or "max".
      balanced: keep the same number of blocks in each output block column.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      Masks: bool arrays shaped like the selected leaves (True = kept, constant on each block),
      None elsewhere.

    Raises:
      LscError: bad sparsity, block or reduce; a selected leaf with ndim < 2, not floating or
        not finite (names its path).
    """
    sparsity = check_sparsity(sparsity)
    if not (
        isinstance(block, tuple)
        and len(block) == 2
        and all(isinstance(b, int) and b >= 1 for b in block)
    ):
        raise LscError(f"block must be a pair of ints >= 1, got {block!r}")
    if reduce not in _REDUCE:
        raise LscError(f"reduce must be one of {sorted(_REDUCE)}, got {reduce!r}")
    for path, w in selected_leaves(params, where):
        check_float_leaf(path, w)
        if w.ndim < 2:
            raise LscError(f"leaf {path!r}: block pruning needs ndim >= 2, got shape {w.shape}")

    def one(_, w):
        scores = block_scores(w, block, reduce)  # [input blocks, output blocks]
        if balanced:
            per_column = max(1, keep_count(scores.shape[0], sparsity))
            keep = jax.vmap(lambda s: topk_mask(s, per_column), in_axes=1, out_axes=1)(scores)
        else:
            keep = topk_mask(scores, max(1, keep_count(scores.size, sparsity)))
        full = jnp.repeat(jnp.repeat(keep, block[0], axis=0), block[1], axis=1)
        rows = w.size // w.shape[-1]
        return full[:rows, : w.shape[-1]].reshape(w.shape)

    return map_selected(one, params, where=where)


def n_of_m(params, n: int, m: int, *, axis: int = -2, where: Where = None):
    """Masks keeping the `n` largest-magnitude weights of every `m` consecutive ones along `axis`.

    The default axis -2 is the input (reduction) axis of Dense kernels [in, out] and of conv
    kernels [kh, kw, cin, cout], the N:M layout of sparse tensor cores (e.g. 2:4).

    Args:
      params: pytree of arrays.
      n: weights kept per group, 0 <= n <= m.
      m: group length; the selected leaves' size along `axis` must be a multiple of m.
      axis: the axis along which groups of m run.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      Masks: bool arrays shaped like the selected leaves with exactly n True in every group
      (ties: the lower index is kept), None elsewhere.

    Raises:
      LscError: bad n or m; a selected leaf whose length along `axis` is not a multiple of m,
        or that is not floating / finite (names its path).
    """
    if not (isinstance(m, int) and isinstance(n, int) and m >= 1 and 0 <= n <= m):
        raise LscError(f"need ints 0 <= n <= m, m >= 1; got n={n!r}, m={m!r}")
    for path, w in selected_leaves(params, where):
        check_float_leaf(path, w)
        if not -w.ndim <= axis < w.ndim or w.shape[axis] % m:
            raise LscError(
                f"leaf {path!r}: shape {w.shape} has no axis {axis} whose length is a multiple of {m}"
            )

    def one(_, w):
        moved = jnp.moveaxis(jnp.abs(w), axis, -1)
        groups = moved.reshape(*moved.shape[:-1], -1, m)
        order = jnp.argsort(-groups, axis=-1, stable=True)
        rank = jnp.argsort(order, axis=-1, stable=True)
        keep = (rank < n).reshape(moved.shape)
        return jnp.moveaxis(keep, -1, axis)

    return map_selected(one, params, where=where)
