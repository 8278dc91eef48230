"""Embedding rows looked up straight from a quantized table: a gather of codes, then of the
codebook; the dense table is never formed."""

import jax
import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray, check_qarray, is_qarray


def _rows_of(q: QArray, ids: jax.Array) -> QArray:
    """The rows `ids` (int [n], in range) of a 2-D QArray [vocab, dim], as a QArray [n, dim]."""
    n, dim = ids.shape[0], q.shape[1]
    if q.method == "residual":  # codes [stages, vocab, ...]
        return QArray(jnp.take(q.codes, ids, axis=1), q.codebook, q.method, q.bits, (n, dim))
    per_row = q.method == "binarize" and q.codebook.ndim == 2  # one [2] codebook per row
    codebook = jnp.take(q.codebook, ids, axis=0) if per_row else q.codebook
    return QArray(jnp.take(q.codes, ids, axis=0), codebook, q.method, q.bits, (n, dim))


def lookup(table, ids: jax.Array, *, path: str = "embedding") -> jax.Array:
    """``table[ids]`` for a float table or a `QArray`, as Flax's Embed computes it.

    A QArray's codes of the selected rows are gathered, then their codebook entries (k-means and
    binarize codes; product and residual codes per sub-vector): the work and the temporaries are
    those of the looked-up rows only. Indices out of ``[-vocab, vocab)`` give NaN rows, as
    ``jnp.take`` does for a float table; negative ones count from the end.

    Args:
      table: float [vocab, dim], or a QArray of shape (vocab, dim).
      ids: int [...], token ids.
      path: the table's leaf path, named in errors.

    Returns:
      float [..., dim] of the table's dtype (float32 for a QArray).

    Raises:
      LscError: ids not integers, a table that is not 2-D, an inconsistent QArray.
    """
    ids = jnp.asarray(ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise LscError(f"embedding {path!r}: ids must be integers, got dtype {ids.dtype}")
    if not is_qarray(table):
        return jnp.take(jnp.asarray(table), ids, axis=0)
    check_qarray(path, table)
    if len(table.shape) != 2:
        raise LscError(f"embedding {path!r}: expected a [vocab, dim] table, got {table.shape}")
    vocab = table.shape[0]
    flat = ids.reshape(-1)
    valid = (flat >= -vocab) & (flat < vocab)
    rows = jnp.where(flat < 0, flat + vocab, flat)
    values = _rows_of(table, jnp.where(valid, rows, 0)).dequantize()
    values = jnp.where(valid[:, None], values, jnp.nan)
    return values.reshape(*ids.shape, table.shape[1])
