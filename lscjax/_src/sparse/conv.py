"""Convolution served from a `BlockSparse` kernel: image patches times the block-sparse matrix."""

from collections.abc import Sequence

import jax
from jax import lax

from lscjax._src.errors import LscError
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.matmul import matmul

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _tuple(v, nd: int, name: str) -> tuple[int, ...]:
    out = (v,) * nd if isinstance(v, int) else tuple(v)
    if len(out) != nd:
        raise LscError(f"conv: {name} needs {nd} entries, got {v!r}")
    return out


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
) -> jax.Array:
    """Channels-last convolution ``lax.conv_general_dilated(x, kernel)`` with a BlockSparse kernel.

    The patches of x (`lax.conv_general_dilated_patches`, reordered from channel-major to the
    kernel's (*window, C_in) order) are multiplied by the kernel's matrix view
    [prod(window) * C_in, C_out] with `matmul`, so the dense kernel is never formed.

    Args:
      x: float [N, *spatial, C_in] (1 to 3 spatial dims).
      w: BlockSparse of a kernel [*window, C_in, C_out] (Flax's Conv layout).
      strides: window strides (int or one per spatial dim).
      padding: "VALID", "SAME" or explicit (low, high) pairs per spatial dim.
      input_dilation, kernel_dilation: as in `lax.conv_general_dilated` (lhs / rhs dilation).
      impl, interpret: passed to `matmul`.

    Returns:
      [N, *out_spatial, C_out] of ``result_type(x.dtype, w.dtype)``.

    Raises:
      LscError: a kernel of rank < 3 or > 5, or x whose channels / rank do not match it.
    """
    nd = w.ndim - 2
    if nd not in _SPATIAL:
        raise LscError(
            f"conv: expected a kernel [*window, C_in, C_out] with 1-3 window dims, "
            f"got shape {w.shape}"
        )
    if x.ndim != nd + 2 or x.shape[-1] != w.shape[-2]:
        raise LscError(
            f"conv: x of shape {x.shape} does not match a kernel of shape {w.shape} "
            f"(expected [N, *spatial({nd}), {w.shape[-2]}])"
        )
    spatial = _SPATIAL[nd]
    patches = lax.conv_general_dilated_patches(
        x,
        filter_shape=w.shape[:-2],
        window_strides=_tuple(strides, nd, "strides"),
        padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
        lhs_dilation=_tuple(input_dilation, nd, "input_dilation"),
        rhs_dilation=_tuple(kernel_dilation, nd, "kernel_dilation"),
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
        precision=lax.Precision.HIGHEST,
    )
    lead = patches.shape[:-1]
    cin = w.shape[-2]
    patches = patches.reshape(*lead, cin, -1).swapaxes(-1, -2).reshape(*lead, -1)
    return matmul(patches, w, impl=impl, interpret=interpret)
