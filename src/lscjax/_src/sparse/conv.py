"""Convolution served from a `BlockSparse` kernel: image patches times the block-sparse matrix."""

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from lscjax._src.errors import LscError
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.matmul import matmul
from lscjax._src.sparse.plan import Tuning

SPATIAL_DIMS = (1, 2, 3)


def _tuple(v, nd: int, name: str) -> tuple[int, ...]:
    out = (v,) * nd if isinstance(v, int) else tuple(v)
    if len(out) != nd:
        raise LscError(f"conv: {name} needs {nd} entries, got {v!r}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in out):
        raise LscError(f"conv: {name} must be positive ints, got {v!r}")
    return out


def patches(x, window, strides, padding, input_dilation, kernel_dilation) -> jax.Array:
    """Image patches in the kernel's (*window, C) order, by strided slices (pure data movement).

    `lax.conv_general_dilated_patches` computes patches as a convolution with an identity filter,
    which costs prod(window) * C times the convolution itself; slicing costs a copy.

    Args:
      x: [N, *spatial, C].
      window: window shape; strides, input_dilation, kernel_dilation: one int per spatial dim.
      padding: "VALID", "SAME" or (low, high) pairs, as in `lax.conv_general_dilated`.

    Returns:
      [N, *out_spatial, prod(window) * C]: feature ``(w_0, ..., c)`` of an output position is
      the input under window offset w (C-order over the window) and channel c.
    """
    nd = len(window)
    interior = [(0, 0, d - 1) for d in input_dilation]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *interior, (0, 0, 0)])
    span = [(k - 1) * d + 1 for k, d in zip(window, kernel_dilation, strict=True)]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:-1], span, strides, padding)
    x = lax.pad(
        x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in padding], (0, 0, 0)]
    )
    out = [(x.shape[1 + i] - span[i]) // strides[i] + 1 for i in range(nd)]
    if min(out) < 1:
        raise LscError(f"conv: window {tuple(window)} does not fit the padded input {x.shape}")
    taps = []
    for offset in itertools.product(*(range(k) for k in window)):
        start = [o * d for o, d in zip(offset, kernel_dilation, strict=True)]
        limit = [s + (n - 1) * st + 1 for s, n, st in zip(start, out, strides, strict=True)]
        taps.append(
            lax.slice(x, (0, *start, 0), (x.shape[0], *limit, x.shape[-1]), (1, *strides, 1))
        )
    stacked = jnp.stack(taps, axis=-2)  # [N, *out, prod(window), C]
    return stacked.reshape(*stacked.shape[:-2], -1)


def conv(
    x: jax.Array,
    w: BlockSparse,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    input_dilation: int | Sequence[int] = 1,
    kernel_dilation: int | Sequence[int] = 1,
    impl: str = "auto",
    interpret: bool = False,
    tuning: Tuning | None = None,
) -> jax.Array:
    """Channels-last convolution ``lax.conv_general_dilated(x, kernel)`` with a BlockSparse kernel.

    The patches of x (`patches`, in the kernel's ``(*window, C_in)`` order) are multiplied by the
    kernel's matrix view [prod(window) * C_in, C_out] with `matmul`, so the dense kernel is
    never formed.

    Args:
      x: float ``[N, *spatial, C_in]`` (1 to 3 spatial dims).
      w: BlockSparse of a kernel ``[*window, C_in, C_out]`` (Flax's Conv layout).
      strides: window strides (int or one per spatial dim).
      padding: "VALID", "SAME" or explicit (low, high) pairs per spatial dim.
      input_dilation, kernel_dilation: as in `lax.conv_general_dilated` (lhs / rhs dilation).
      impl, interpret, tuning: passed to `matmul`.

    Returns:
      ``[N, *out_spatial, C_out]`` of ``result_type(x.dtype, w.dtype)``.

    Raises:
      LscError: a kernel of rank < 3 or > 5, x whose channels / rank do not match it, or
        strides / dilations that are not positive ints.
    """
    nd = w.ndim - 2
    if nd not in SPATIAL_DIMS:
        raise LscError(
            f"conv: expected a kernel [*window, C_in, C_out] with 1-3 window dims, got shape "
            f"{w.shape}"
        )
    if x.ndim != nd + 2 or x.shape[-1] != w.shape[-2]:
        raise LscError(
            f"conv: x of shape {x.shape} does not match a kernel of shape {w.shape} "
            f"(expected [N, *spatial({nd}), {w.shape[-2]}])"
        )
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
        if len(padding) != nd:
            raise LscError(f"conv: padding needs {nd} (low, high) pairs, got {padding!r}")
    input_dilation = _tuple(input_dilation, nd, "input_dilation")
    if isinstance(padding, str) and max(input_dilation) > 1:
        raise LscError("conv: string padding with input_dilation > 1 is undefined (as in lax)")
    cols = patches(
        x,
        w.shape[:-2],
        _tuple(strides, nd, "strides"),
        padding,
        input_dilation,
        _tuple(kernel_dilation, nd, "kernel_dilation"),
    )
    return matmul(cols, w, impl=impl, interpret=interpret, tuning=tuning)
