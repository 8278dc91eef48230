"""Network Trimming (Hu et al. 2016): prune channels by their Average Percentage of Zeros."""

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError


def apoz_scores(activations: jnp.ndarray) -> jnp.ndarray:
    """APoZ of each channel: the fraction of exact zeros over all examples and positions.

    Args:
      activations: post-ReLU activations float [..., C] (e.g. [N, H, W, C] or [N, C]).

    Returns:
      float32 [C] in [0, 1].
    """
    a = jnp.asarray(activations)
    return jnp.mean((a == 0).reshape(-1, a.shape[-1]).astype(jnp.float32), axis=0)


def apoz(
    activations: Mapping[str, jnp.ndarray],
    *,
    num_std: float = 1.0,
    kept: Mapping[str, np.ndarray] | None = None,
):
    """Channel masks pruning the channels whose APoZ exceeds the layer's mean + num_std * std.

    Hu et al. iterate: trim the layer of the highest mean APoZ, retrain, measure again. In later
    rounds, `kept` gives the channels still alive; the mean and std are taken over them only
    (pruned channels output zeros, APoZ 1, and would inflate both), and they stay pruned.

    Args:
      activations: {layer: post-ReLU activations float [..., C]}, e.g. from
        `lscjax.prune.collect_activations` with ReLU applied to the layer outputs.
      num_std: how many standard deviations (over the layer's channels) above the mean APoZ a
        channel must be to be pruned (Hu et al.: 1).
      kept: {layer: bool [C]}, the channels kept so far (default: all).

    Returns:
      {layer: bool np.ndarray [C]} (True = kept). A layer keeps at least its lowest-APoZ kept
      channel.

    Raises:
      TypeError: `activations` is not a mapping.
      LscError: an activation array with ndim < 1, num_std < 0, a `kept` mask of the wrong
        length or keeping no channel (names the layer).
    """
    if not isinstance(activations, Mapping):
        raise TypeError(
            f"activations must be a mapping {{layer: array [..., C]}}, got "
            f"{type(activations).__name__}"
        )
    if not num_std >= 0:
        raise LscError(f"num_std must be >= 0, got {num_std!r}")
    out = {}
    for layer, acts in activations.items():
        if jnp.ndim(acts) < 1:
            raise LscError(f"activations of {layer!r}: need [..., C], got a scalar")
        scores = np.asarray(apoz_scores(acts), np.float64)
        alive = np.ones(scores.shape, bool) if kept is None or layer not in kept else kept[layer]
        alive = np.asarray(alive, bool)
        if alive.shape != scores.shape or not alive.any():
            raise LscError(
                f"kept mask of {layer!r}: need a bool [{scores.size}] keeping a channel, got "
                f"shape {alive.shape} with {int(alive.sum())} kept"
            )
        live = scores[alive]
        keep = alive & (scores <= live.mean() + num_std * live.std())
        keep[np.flatnonzero(alive)[np.argmin(live)]] = True
        out[layer] = keep
    return out
