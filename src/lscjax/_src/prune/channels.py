"""Channel masks and the per-input-channel view of a layer, shared by the structured methods.

Channel masks are a dict ``{layer: bool [C_out]}`` keyed by a layer's path without its leaf name
(the kernel 'Conv_0/kernel' belongs to layer 'Conv_0'); True = the output channel (filter, or
Dense unit) is kept.

The structured methods that look at the *next* layer (channel LASSO, ThiNet) see that layer as
a sum over its input channels: output ``Y [M, O] = sum_c X[:, c, :] @ W[c]`` with ``X [M, C, g]``
(M output positions, g the values each channel feeds to one output: kh * kw for a conv, the
number of spatial positions for a Dense layer after a flatten, 1 for Dense after Dense) and
``W [C, g, O]``. `input_groups` builds that view; `kernel_from_groups` goes back.
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.tree import map_selected


def layer_of(path: str) -> str:
    """The layer of a leaf path: 'Conv_0/kernel' -> 'Conv_0'."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


def weight_masks(params, channel_masks: Mapping[str, np.ndarray], *, norms=None):
    """Expand channel masks to weight masks that zero every output of a pruned channel.

    A pruned channel's kernel slice ``[..., c]`` and bias ``[c]`` are masked, and so are the
    scale and bias ``[c]`` of the normalization layer that follows it (named in `norms`), so
    the channel's output is exactly 0 (with a ReLU-like activation, act(0) = 0, the next layer
    then sees 0). Use with `lscjax.prune.apply` and `lscjax.train.keep_masks`.

    Args:
      params: pytree of arrays with layers named in `channel_masks` (and `norms` values).
      channel_masks: {layer: bool [C_out]}.
      norms: optional {layer: normalization layer} (e.g. {'Conv_0': 'BatchNorm_0'}).

    Returns:
      Masks: bool arrays shaped like the masked leaves, None elsewhere.

    Raises:
      LscError: a mask whose length differs from a masked leaf's last axis (names the path).
    """
    owner = dict(channel_masks)
    for layer, norm in (norms or {}).items():
        if layer in channel_masks:
            owner[norm] = channel_masks[layer]

    def one(path, w):
        mask = np.asarray(owner[layer_of(path)], bool)
        if np.ndim(w) < 1 or np.shape(w)[-1] != mask.shape[0]:
            raise LscError(
                f"leaf {path!r}: channel mask of length {mask.shape[0]} does not match the "
                f"leaf's last axis (shape {np.shape(w)})"
            )
        return jnp.broadcast_to(jnp.asarray(mask), np.shape(w))

    return map_selected(one, params, where=lambda path, _: layer_of(path) in owner)


def input_groups(
    inputs: jax.Array,
    kernel: jax.Array,
    *,
    channels: int | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: str = "VALID",
) -> tuple[jax.Array, jax.Array]:
    """A layer's inputs and kernel grouped by input channel.

    Args:
      inputs: the layer's input: float [N, H, W, C] for a conv kernel [kh, kw, C, O], or
        float [N, D] for a Dense kernel [D, O]; for a Dense layer after a Flax (HWC) flatten,
        D = S * C with feature ``s * C + c`` from channel c.
      kernel: float [kh, kw, C, O] (conv) or [D, O] (Dense).
      channels: C for a Dense kernel (default D: one feature per channel).
      strides, padding: the conv's (ignored for Dense).

    Returns:
      (X float32 [M, C, g], W float32 [C, g, O]) with ``sum_c X[:, c] @ W[c]`` the layer's
      output before the bias, M = N * H' * W' (conv) or N (Dense).

    Raises:
      LscError: shapes that do not fit together.
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    inputs = jnp.asarray(inputs, jnp.float32)
    if kernel.ndim == 4:
        kh, kw, c, o = kernel.shape
        if inputs.ndim != 4 or inputs.shape[-1] != c:
            raise LscError(
                f"conv kernel {kernel.shape} needs inputs [N, H, W, {c}], got {inputs.shape}"
            )
        patches = jax.lax.conv_general_dilated_patches(
            inputs, (kh, kw), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = patches.reshape(-1, c, kh * kw)
        w = kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw, o)
        return x, w
    if kernel.ndim != 2:
        raise LscError(f"kernel must be [kh, kw, C, O] or [D, O], got shape {kernel.shape}")
    d, o = kernel.shape
    c = d if channels is None else channels
    if inputs.ndim != 2 or inputs.shape[1] != d or d % c:
        raise LscError(
            f"Dense kernel {kernel.shape} with {c} channels needs inputs [N, {d}] and {d} "
            f"divisible by {c}; got inputs {inputs.shape}"
        )
    x = inputs.reshape(-1, d // c, c).transpose(0, 2, 1)
    w = kernel.reshape(d // c, c, o).transpose(1, 0, 2)
    return x, w


def kernel_from_groups(w: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """Inverse of the kernel half of `input_groups`: W [C, g, O] -> kernel of `kernel_shape`."""
    c, g, o = w.shape
    if len(kernel_shape) == 4:
        kh, kw = kernel_shape[:2]
        return w.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
    return w.transpose(1, 0, 2).reshape(g * c, o)


def channel_outputs(x: jax.Array, w: jax.Array) -> jax.Array:
    """Each input channel's contribution to the output: X [M, C, g], W [C, g, O] -> [C, M, O]."""
    return jnp.einsum("mcg,cgo->cmo", x, w)


def check_keep(n_keep: int, channels: int) -> int:
    """Raise LscError unless 1 <= n_keep <= channels."""
    if not (isinstance(n_keep, int | np.integer) and 1 <= n_keep <= channels):
        raise LscError(f"n_keep must be an int in [1, {channels}], got {n_keep!r}")
    return int(n_keep)


class ChannelSelection(NamedTuple):
    """Input channels a method keeps for a layer, and the layer's kernel refit on them.

    Attributes:
      mask: bool np.ndarray [C] (True = kept): the layer's input channels, i.e. the output
        channels of the layer before it (use it as that layer's channel mask).
      kernel: float32 array of the original kernel's shape, refit on the kept channels and 0 on
        the pruned ones.
    """

    mask: np.ndarray
    kernel: jax.Array


def layer_sample(
    inputs: jax.Array,
    kernel: jax.Array,
    n_keep: int,
    *,
    channels: int | None,
    strides: tuple[int, int],
    padding: str,
    max_rows: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The sampled per-channel view of a layer that channel LASSO and ThiNet fit.

    Args: as `input_groups`, plus n_keep (validated against C), max_rows (output positions
    drawn without replacement; None keeps all M) and the sampling seed.

    Returns:
      (X float32 [M', C, g], W float32 [C, g, O], Z float64 [C, M' * O]: channel c's
      contribution to each sampled output value, n_keep).
    """
    x, w = input_groups(inputs, kernel, channels=channels, strides=strides, padding=padding)
    n_keep = check_keep(n_keep, x.shape[1])
    if max_rows is not None and x.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_rows, replace=False))
        x = x[rows]
    z = np.asarray(channel_outputs(x, w), np.float64)
    return np.asarray(x), np.asarray(w), z.reshape(z.shape[0], -1), n_keep
