"""Stacking BlockSparse weights for ``jax.vmap`` / ``lax.scan``, and merging an overflow back
into its rows."""

import dataclasses

import jax
import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.sparse.block_sparse import BlockSparse


def stack(weights) -> BlockSparse:
    """Weights of one layout kind stacked on a new leading axis, for ``jax.vmap`` / ``lax.scan``.

    The layers of a scanned model (or the weight sets of a benchmark) differ in Kmax, in their
    row-group plans and in their overflow rows, which are part of a BlockSparse's pytree
    structure; stacking puts overflow slots back in their rows (`merged`), pads every weight to
    the largest Kmax (zero blocks, the row's last index: ordinary padded slots) and drops the
    plans (``row_groups=None``: the XLA path then multiplies the rows in place).

    Args:
      weights: a non-empty sequence of BlockSparse with equal shape, block, bits, dtypes and
        codebook size.

    Returns:
      A BlockSparse whose arrays have a leading axis of len(weights): blocks [S, R, Kmax, ...],
      indices [S, R, Kmax], counts [S, R], codebook [S, n_codes] or None. Slicing it on that
      axis (``jax.tree.map(lambda a: a[i], stacked)``, or inside vmap / scan) gives weight i.

    Raises:
      LscError: an empty sequence, a non-BlockSparse, or weights that differ in shape, block,
        bits, dtype or codebook size (the message names the first mismatching index).
    """
    weights = list(weights)
    if not weights or not all(isinstance(w, BlockSparse) for w in weights):
        raise LscError("stack: expected a non-empty sequence of BlockSparse")

    def kind(w: BlockSparse) -> tuple:
        book = None if w.codebook is None else (w.codebook.shape, str(w.codebook.dtype))
        return w.shape, w.block, w.bits, str(w.blocks.dtype), book

    for i, w in enumerate(weights):
        if kind(w) != kind(weights[0]):
            raise LscError(
                f"stack: weight {i} is {kind(w)} (shape, block, bits, dtype, codebook), "
                f"weight 0 is {kind(weights[0])}"
            )
    weights = [merged(w) for w in weights]
    kmax = max(w.kmax for w in weights)

    def padded(w: BlockSparse) -> BlockSparse:
        extra = ((0, 0), (0, kmax - w.kmax))
        blocks = jnp.pad(w.blocks, extra + ((0, 0), (0, 0)))
        indices = jnp.pad(w.indices, extra, mode="edge")
        return dataclasses.replace(w, blocks=blocks, indices=indices, row_groups=None)

    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[padded(w) for w in weights])


def merged(w: BlockSparse) -> BlockSparse:
    """`w` without its overflow: the overflow slots back in their rows, Kmax + K2 slots a row
    (row_groups dropped); `w` itself when it has none."""
    ov = w.overflow
    if ov is None:
        return w
    k2, tail = ov.indices.shape[1], slice(w.kmax, None)
    blocks = jnp.pad(w.blocks, ((0, 0), (0, k2)) + ((0, 0),) * (w.blocks.ndim - 2))
    indices = jnp.pad(w.indices, ((0, 0), (0, k2)), mode="edge")
    return dataclasses.replace(
        w,
        blocks=blocks.at[ov.rows, tail].set(ov.blocks),
        indices=indices.at[ov.rows, tail].set(ov.indices),
        row_groups=None,
        overflow=None,
    )
