"""What the Linen and NNX integrations share: kernels converted to `BlockSparse`, and Dense and
Conv forward passes with a BlockSparse kernel, configured like Flax's layers.

Linen (`nn.Dense`, `nn.Conv`) and NNX (`nnx.Linear`, `nnx.Conv`) layers share the attribute names
read here (dtype, strides, padding, input_dilation, kernel_dilation, feature_group_count, mask),
so both integrations call these functions with the layer whose forward pass they replace.
"""

import jax
import jax.numpy as jnp
from flax.linen.linear import canonicalize_padding

from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray, is_qarray
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.conv import conv
from lscjax._src.sparse.matmul import matmul
from lscjax._src.sparse.stack import stack
from lscjax._src.tree import check_float_leaf


def check_max_density(max_density: float) -> None:
    """Raise LscError unless `max_density` (the conversions' bound on a kernel's fraction of
    non-zero blocks) is in [0, 1]."""
    if not 0.0 <= max_density <= 1.0:
        raise LscError(f"max_density must be in [0, 1], got {max_density!r}")


def _layers(leaf) -> list:
    """The per-layer kernels of a stacked kernel [L, ...] (float array or QArray).

    A QArray with one code per weight and one codebook (k-means, per-layer binarize) is sliced
    into QArrays sharing that codebook; other QArrays are dequantized first.
    """
    if not is_qarray(leaf):
        return list(leaf)
    if leaf.method in ("kmeans", "binarize") and leaf.codebook.ndim == 1:
        return [
            QArray(codes, leaf.codebook, leaf.method, leaf.bits, leaf.shape[1:])
            for codes in leaf.codes
        ]
    return list(leaf.dequantize())


def block_sparse_leaf(path: str, leaf, block, *, stacked: bool = False) -> BlockSparse:
    """One kernel (float array or QArray) as a BlockSparse; errors name the leaf `path`.

    With `stacked`, the leaf is L layers' kernels [L, ...]: each is converted and the L
    BlockSparse are stacked (`lscjax.sparse.stack`).
    """
    if stacked:
        layers = _layers(leaf)
        return stack(
            [block_sparse_leaf(f"{path}[{i}]", one, block) for i, one in enumerate(layers)]
        )
    try:
        if is_qarray(leaf):
            return BlockSparse.from_qarray(leaf, block, path=path)
        check_float_leaf(path, leaf)
        return BlockSparse.from_dense(leaf, block)
    except LscError as err:
        raise LscError(f"leaf {path!r}: {err}") from err


def _out_dtype(layer, x, kernel: BlockSparse, bias):
    if getattr(layer, "dtype", None) is not None:
        return jnp.dtype(layer.dtype)
    dtypes = [x.dtype, kernel.dtype] + ([] if bias is None else [bias.dtype])
    return jnp.result_type(*dtypes)


def _add_bias(y, bias, dtype):
    y = y.astype(dtype)
    return y if bias is None else y + bias.astype(dtype)


def dense(layer, x, kernel: BlockSparse, bias, *, impl: str, interpret: bool) -> jax.Array:
    """The forward pass of `layer` (a Dense / Linear): ``x @ kernel + bias``.

    Args:
      layer: the Flax layer (its ``dtype`` sets the computation dtype, as in Flax).
      x: float [..., in]; kernel: BlockSparse of shape (in, out); bias: [out] or None.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      [..., out] of the layer's dtype (default: the promoted dtype of x, kernel and bias).
    """
    dtype = _out_dtype(layer, x, kernel, bias)
    y = matmul(jnp.asarray(x).astype(dtype), kernel, impl=impl, interpret=interpret)
    return _add_bias(y, bias, dtype)


def conv_layer(layer, x, kernel: BlockSparse, bias, *, path: str, impl: str, interpret: bool):
    """The forward pass of `layer` (a Conv) with `kernel` [*window, in, out], as Flax computes it.

    Supports Flax's strides, padding (strings, ints, pairs), input and kernel dilation, unbatched
    inputs and several leading batch dims.

    Args:
      layer: the Flax Conv layer.
      x: float [*batch, *spatial, in] (or [*spatial, in] unbatched).
      kernel: BlockSparse [*window, in, out]; bias: [out] or None.
      path: the layer's path, named in errors.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      [*batch, *out_spatial, out] of the layer's dtype.

    Raises:
      LscError: feature groups, a mask, or CIRCULAR/CAUSAL padding (not served block-sparse).
    """
    nd = kernel.ndim - 2
    if getattr(layer, "feature_group_count", 1) != 1 or getattr(layer, "mask", None) is not None:
        raise LscError(f"layer {path!r}: grouped or masked Conv is not served block-sparse")
    padding = canonicalize_padding(layer.padding, nd)
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
        raise LscError(f"layer {path!r}: padding {padding!r} is not served block-sparse")
    dtype = _out_dtype(layer, x, kernel, bias)
    x = jnp.asarray(x).astype(dtype)
    unbatched = x.ndim == nd + 1
    batch = () if unbatched else x.shape[: x.ndim - nd - 1]
    flat = x.reshape((-1, *x.shape[x.ndim - nd - 1 :]))
    y = conv(
        flat,
        kernel,
        strides=layer.strides or 1,
        padding=padding,
        input_dilation=layer.input_dilation or 1,
        kernel_dilation=layer.kernel_dilation or 1,
        impl=impl,
        interpret=interpret,
    )
    y = y[0] if unbatched else y.reshape((*batch, *y.shape[1:]))
    return _add_bias(y, bias, dtype)
