"""The LeNets of the compression literature, as Flax Linen modules.

Both take images as float32 [N, 28, 28, 1] (or [N, 28, 28]) and return logits float32 [N, 10].
Parameter paths: LeNet300 'Dense_0..2/kernel|bias'; LeNet5 'Conv_0..1', 'Dense_0..1'.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class LeNet300(nn.Module):
    """LeNet-300-100: 784-300-100-10 fully connected, ReLU; 266,200 weights + 410 biases."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


class LeNet5(nn.Module):
    """LeNet-5, the Caffe variant of Han et al. and Liu et al.: 430,500 weights + 580 biases.

    conv 20@5x5 (valid) -> max-pool 2 -> conv 50@5x5 (valid) -> max-pool 2 -> fc 500 -> fc 10.
    ReLU follows both convolutions and fc 500 (Caffe's prototxt has it only after fc 500; the
    conv ReLUs give the channel-activation statistics that APoZ needs and train faster).
    """

    @nn.compact
    def __call__(self, x):
        if x.ndim == 3:
            x = x[..., None]
        x = nn.relu(nn.Conv(20, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(50, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(500)(x))
        return nn.Dense(10)(x)


def prepare(images) -> jnp.ndarray:
    """uint8 images [N, 28, 28] -> float32 [N, 28, 28, 1] scaled to [0, 1]."""
    return jnp.asarray(images, jnp.float32)[..., None] / 255.0


def init(model: nn.Module, seed: int = 0) -> tuple[dict, Callable]:
    """A classifier of 28 x 28 images, ready to train: its params and its apply function.

    Args:
      model: a Linen module taking float32 [N, 28, 28, 1] (e.g. `LeNet5()`, `LeNet300()`).
      seed: the ``jax.random.key`` seed of the initialization.

    Returns:
      (params, apply_fn): ``model.init(...)["params"]`` and
      ``apply_fn(params, x) = model.apply({"params": params}, x)``, as `fit` and `accuracy` take.
    """
    params = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1), jnp.float32))["params"]
    return params, lambda p, x: model.apply({"params": p}, x)
