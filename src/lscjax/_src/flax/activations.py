"""Collect the inputs and outputs of a Flax Linen model's layers over a data iterator.

Uses `flax.linen.intercept_methods`, which sees each submodule call's arguments as well as its
result (capture_intermediates records results only; the structured methods that reconstruct
the next layer's output need its inputs too).
"""

from collections.abc import Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np


class LayerActivations(NamedTuple):
    """One layer's activations over all batches.

    Attributes:
      inputs: np.ndarray [N, ...]: the first positional argument of the layer's __call__.
      outputs: np.ndarray [N, ..., C]: what the call returned (before any activation function
        applied outside the layer, e.g. the ReLU after a Conv).
    """

    inputs: np.ndarray
    outputs: np.ndarray


def collect_activations(
    model: nn.Module,
    variables: dict[str, Any],
    batches: Iterable,
    *,
    layers: Iterable[str] | None = None,
    **apply_kwargs,
) -> dict[str, LayerActivations]:
    """Run `model` over `batches` and record the named layers' inputs and outputs.

    Args:
      model: a Flax Linen module.
      variables: its variables, e.g. ``{"params": params}`` (add "batch_stats" for BatchNorm).
      batches: an iterable of model inputs (arrays, e.g. float32 [B, 28, 28, 1]).
      layers: layer paths to record, e.g. ['Conv_0', 'Dense_0'] (nested: 'Block_0/Conv_0');
        None records every submodule call.
      **apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).

    Returns:
      {layer: LayerActivations} with the batches concatenated along axis 0, layers in call
      order. A layer called more than once per forward pass keeps its last call.
    """
    wanted = None if layers is None else set(layers)

    def run(variables, x):
        seen = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = "/".join(context.module.path)
            if context.method_name == "__call__" and path and (wanted is None or path in wanted):
                seen[path] = (args[0], out)
            return out

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, **apply_kwargs)
        return seen

    run = jax.jit(run)
    parts: dict[str, list] = {}
    for x in batches:
        for path, pair in run(variables, x).items():
            parts.setdefault(path, []).append(jax.device_get(pair))
    return {
        path: LayerActivations(
            np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
        )
        for path, pairs in parts.items()
    }
