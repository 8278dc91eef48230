"""A small jitted optax train / eval loop for image classifiers, shared by examples and the CLI."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from lscjax._src.models import prepare


def cross_entropy(logits, labels) -> jnp.ndarray:
    """Mean softmax cross-entropy. logits float32 [N, C], labels int32 [N] -> float32 []."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation):
    """A jitted step ``(params, opt_state, batch) -> (params, opt_state, loss)``.

    Args:
      loss_fn: ``(params, batch) -> float32 []``; `batch` is whatever the caller passes.
      optimizer: any optax transform; it always receives `params` (masking and penalty
        transforms need them).
    """

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def classifier_loss(apply_fn: Callable) -> Callable:
    """``(params, (x, y)) -> cross-entropy of apply_fn(params, x)`` against integer labels y."""
    return lambda params, batch: cross_entropy(apply_fn(params, batch[0]), batch[1])


def fit(
    apply_fn: Callable,
    params,
    optimizer: optax.GradientTransformation,
    images,
    labels,
    *,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    opt_state=None,
    progress: bool = False,
):
    """Train `params` for `steps` minibatch steps of cross-entropy.

    Args:
      apply_fn: ``(params, x float32 [B, 28, 28, 1]) -> logits float32 [B, C]``, e.g.
        ``lambda p, x: model.apply({"params": p}, x)``.
      params: the parameter pytree to start from (not modified: a new tree is returned).
      optimizer: any optax transform, e.g. ``keep_masks(optax.adam(1e-3), masks)``.
      images: uint8 [N, 28, 28]; labels: int32 [N].
      steps: number of optimizer steps; batches run through shuffled epochs.
      opt_state: resume from this optimizer state instead of ``optimizer.init(params)``.
      progress: show a progress bar.

    Returns:
      (params, opt_state) after training.
    """
    rng = np.random.default_rng(seed)
    x_all = np.asarray(prepare(images))
    y_all = np.asarray(labels, np.int32)
    step = make_step(classifier_loss(apply_fn), optimizer)
    params = jax.tree_util.tree_map(jnp.array, params)  # fresh buffers: the step donates them
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    order = np.empty(0, np.int64)
    bar = tqdm(total=steps, disable=not progress, desc="train", leave=False)
    for _ in range(steps):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(len(y_all))])
        idx, order = order[:batch_size], order[batch_size:]
        params, opt_state, _ = step(params, opt_state, (x_all[idx], y_all[idx]))
        bar.update()
    bar.close()
    return params, opt_state


def accuracy(apply_fn: Callable, params, images, labels, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of `apply_fn(params, x)` on uint8 images [N, 28, 28]."""
    predict = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), axis=-1))
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = prepare(images[start : start + batch_size])
        correct += int(
            jnp.sum(predict(params, x) == jnp.asarray(labels[start : start + batch_size]))
        )
    return correct / len(labels)
