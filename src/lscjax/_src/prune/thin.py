"""Thinning: physically remove pruned channels and the next layer's matching inputs."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.prune.channels import layer_of
from lscjax._src.tree import path_str


class Thinned(NamedTuple):
    """Result of `thin`.

    Attributes:
      params: the params with pruned channels removed (NumPy arrays, smaller shapes).
      batch_stats: the BatchNorm statistics thinned the same way (None if none were given).
      features: {layer: number of output channels kept}, to define the smaller module.
    """

    params: Any
    batch_stats: Any
    features: dict[str, int]


def _mask(masks, layer: str, length: int, path: str) -> np.ndarray:
    mask = np.asarray(masks[layer], bool)
    if mask.shape != (length,):
        raise LscError(
            f"leaf {path!r}: channel mask of {layer!r} has shape {mask.shape}, expected ({length},)"
        )
    if not mask.any():
        raise LscError(f"channel mask of {layer!r} keeps no channel")
    return mask


def thin(
    params,
    channel_masks: Mapping[str, np.ndarray],
    *,
    consumers: Mapping[str, str],
    norms: Mapping[str, str] | None = None,
    batch_stats=None,
) -> Thinned:
    """Remove pruned output channels of layers and the matching input channels of their consumers.

    For a layer L with channel mask m (bool [C], True = kept): L's kernel [..., C] and bias [C]
    keep ``m``; the normalization layer ``norms[L]`` keeps ``m`` in its scale and bias (and its
    mean and var in `batch_stats`); the consumer ``consumers[L]`` keeps the input channels
    ``m``: a conv kernel [kh, kw, C, O] its axis 2, a Dense kernel [D, O] the rows
    ``r`` with ``m[r % C]`` (D = S * C: Flax flattens feature maps [H, W, C] channel-last, so
    Conv -> flatten -> Dense and Dense -> Dense (S = 1) are the same rule).

    The thin model's outputs equal those of the model whose pruned channels are zeroed with
    `weight_masks` + `apply`, provided the activations between L and its consumer map 0 to 0
    (ReLU, max-pool, flatten).

    Args:
      params: nested dict of arrays (Flax params).
      channel_masks: {layer: bool [C_out]}.
      consumers: {layer: the layer that reads its output}; a layer without a consumer (the
        last) only loses its output channels.
      norms: {layer: its normalization layer (e.g. 'BatchNorm_0')}, scale/bias [C].
      batch_stats: Flax batch_stats collection ({'BatchNorm_0': {'mean', 'var'}}), or None.

    Returns:
      Thinned(params, batch_stats, features).

    Raises:
      LscError: a mask whose length does not match its layer, a mask keeping nothing, a
        consumer whose input size is not a multiple of the producer's channels (names the path).
    """
    norms = dict(norms or {})
    own = {layer: layer for layer in channel_masks} | {
        norms[layer]: layer for layer in channel_masks if layer in norms
    }
    fed_by = {consumers[layer]: layer for layer in channel_masks if layer in consumers}

    def visit(kp, leaf):
        path, w = path_str(kp), np.asarray(leaf)
        layer = layer_of(path)
        if layer in own and w.ndim >= 1:
            w = w[..., _mask(channel_masks, own[layer], w.shape[-1], path)]
        if layer in fed_by and path.endswith("kernel"):
            producer = fed_by[layer]
            c = np.asarray(channel_masks[producer]).shape[0]
            if w.ndim == 4:
                w = w[:, :, _mask(channel_masks, producer, w.shape[2], path)]
            elif w.ndim == 2 and w.shape[0] % c == 0:
                w = w[np.tile(_mask(channel_masks, producer, c, path), w.shape[0] // c)]
            else:
                raise LscError(
                    f"leaf {path!r}: shape {w.shape} cannot take the {c} channels of {producer!r}"
                )
        return w

    thin_params = jax.tree_util.tree_map_with_path(visit, params)
    thin_stats = (
        None if batch_stats is None else jax.tree_util.tree_map_with_path(visit, batch_stats)
    )
    features = {layer: int(np.count_nonzero(m)) for layer, m in channel_masks.items()}
    return Thinned(thin_params, thin_stats, features)
