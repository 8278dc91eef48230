"""The Z-step projection of ADMM weight pruning (Zhang et al. 2018): onto at most k non-zeros."""

import jax.numpy as jnp

from lscjax._src.errors import LscError
from lscjax._src.prune.magnitude import topk_mask


def project_topk(w: jnp.ndarray, k: int) -> jnp.ndarray:
    """Euclidean projection of `w` onto the set of arrays with at most `k` non-zeros.

    Keeps the `k` entries of largest magnitude and zeroes the rest (ties: the lower flat index
    is kept, as in `topk_mask`). The projection is idempotent: ``project_topk(project_topk(w, k),
    k) == project_topk(w, k)``.

    Args:
      w: float array of any shape.
      k: number of entries kept, a Python int in [0, w.size].

    Returns:
      Array with `w`'s shape and dtype: `w` at the kept entries, 0 elsewhere.

    Raises:
      LscError: `k` outside [0, w.size].
    """
    if not (isinstance(k, int) and 0 <= k <= w.size):
        raise LscError(f"k must be an int in [0, {w.size}], got {k!r}")
    return jnp.where(topk_mask(jnp.abs(w), k), w, jnp.zeros((), w.dtype))
