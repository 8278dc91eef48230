"""Distillation: retraining a compressed model against the dense model's outputs, without labels."""

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from lscjax._src.compress import Retrain
from lscjax._src.errors import LscError


def distillation(
    apply_fn: Callable,
    teacher_params,
    data: Iterable,
    steps: int,
    *,
    optimizer: optax.GradientTransformation | None = None,
):
    """A `Retrain` hook that fine-tunes against the dense model's outputs: no labels needed.

    The loss of a batch is the mean squared difference between ``apply_fn(params, batch)`` and
    ``apply_fn(teacher_params, batch)`` (the teacher's outputs under stop_gradient). In
    `compress` the usual stages keep the pruning masks (`keep_masks`) and the shared
    centroids (`shared_centroids`).

    Args:
      apply_fn: ``(params, batch) -> outputs`` (any float array or pytree of them, e.g.
        sentence embeddings float32 [B, H] or logits float32 [B, C]).
      teacher_params: the dense model's params.
      data: an iterable of unlabelled batches (model inputs), iterated again when exhausted.
      steps: optimizer steps per stage.
      optimizer: the inner optimizer (default: optax.adam(1e-4)).

    Returns:
      A `lscjax.Retrain`.

    Raises:
      LscError: apply_fn not callable, steps < 1.
    """
    if not callable(apply_fn):
        raise LscError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LscError(f"steps must be an int >= 1, got {steps!r}")

    def loss_fn(params, batch):
        want = jax.lax.stop_gradient(apply_fn(teacher_params, batch))
        got = apply_fn(params, batch)
        errors = jax.tree_util.tree_map(lambda a, b: jnp.mean((a - b) ** 2), got, want)
        return sum(jax.tree_util.tree_leaves(errors))

    extra = {} if optimizer is None else {"optimizer": optimizer}
    return Retrain(loss_fn, data, steps, **extra)
