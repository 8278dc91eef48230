"""Gradients of the shared values: each centroid's gradient is the sum of its members' gradients."""

import jax
import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray, check_qarray


def fixed_entries(q: QArray) -> jax.Array:
    """bool, the codebook's shape: entries that never train (the pruned-zero code of "kmeans")."""
    if q.method == "kmeans":
        return q.codebook == 0.0
    return jnp.zeros(q.codebook.shape, bool)


def centroid_grads(q: QArray, weight_grads: jax.Array, *, path: str = "qarray") -> jax.Array:
    """The gradient of every codebook entry: the sum of the gradients of the weights that use it.

    This is the chain rule through ``q.dequantize()`` (Deep Compression's centroid update), with
    the pruned positions excluded: a "kmeans" codebook entry equal to 0.0 (code 0 of a pruned
    layer) gets gradient 0.

    Args:
      q: a QArray.
      weight_grads: float array of shape ``q.shape``, the loss gradient w.r.t. the dense weight.
      path: the leaf path named in error messages.

    Returns:
      float32 of the codebook's shape: [K] for "kmeans"/"binarize" (or [rows, 2]), [s, K, sub_dim]
      for "product", [stages, K] for "residual".

    Raises:
      LscError (a ValueError): `weight_grads` not of shape ``q.shape`` or an inconsistent QArray.
    """
    check_qarray(path, q)
    if tuple(jnp.shape(weight_grads)) != tuple(q.shape):
        raise LscError(
            f"leaf {path!r}: gradient of shape {tuple(jnp.shape(weight_grads))} for a QArray of "
            f"shape {tuple(q.shape)}"
        )

    def dense(codebook):
        return QArray(q.codes, codebook, q.method, q.bits, q.shape).dequantize()

    _, pullback = jax.vjp(dense, q.codebook)
    (grads,) = pullback(jnp.asarray(weight_grads, jnp.float32))
    return jnp.where(fixed_entries(q), 0.0, grads)
