"""Pruning filters by their L1 norm (Li et al. 2016)."""

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from lscjax._src.prune.channels import layer_of
from lscjax._src.prune.magnitude import check_sparsity, keep_count, topk_mask
from lscjax._src.tree import Where, check_float_leaf, selected_leaves


def filter_norms(kernel: jnp.ndarray) -> jnp.ndarray:
    """L1 norm of each output channel: kernel float [..., C_out] -> float32 [C_out]."""
    return jnp.sum(jnp.abs(kernel.reshape(-1, kernel.shape[-1])).astype(jnp.float32), axis=0)


def l1_filters(params, sparsity: float | Mapping[str, float], *, where: Where = None):
    """Channel masks keeping each layer's filters of largest L1 norm.

    Args:
      params: pytree of arrays.
      sparsity: fraction of filters removed per layer, in [0, 1), or {kernel path: fraction}
        (per-layer ratios, e.g. from a sensitivity analysis); at least one filter is kept.
      where: selection of kernels (default: 'kernel' leaves with ndim >= 2).

    Returns:
      {layer: bool np.ndarray [C_out]} (True = kept), ``max(1, round(C_out * (1 - s)))`` True
      per layer; ties keep the lower channel index.

    Raises:
      LscError: a sparsity outside [0, 1); a selected leaf not floating or not finite.
    """
    out = {}
    for path, w in selected_leaves(params, where):
        check_float_leaf(path, w)
        s = sparsity[path] if isinstance(sparsity, Mapping) else sparsity
        s = check_sparsity(s, f"sparsity of {path!r}")
        c = w.shape[-1]
        out[layer_of(path)] = np.asarray(topk_mask(filter_norms(w), max(1, keep_count(c, s))))
    return out
