"""What the Linen and NNX integrations share: the forward passes of Dense / DenseGeneral /
Einsum / Conv layers with a block-sparse kernel and of Embed with a quantized table, configured
like Flax's layers.

Linen (`nn.Dense`, `nn.DenseGeneral`, `nn.Einsum`, `nn.Conv`, `nn.Embed`) and NNX (`nnx.Linear`,
`nnx.LinearGeneral`, `nnx.Conv`, `nnx.Embed`) layers share the attribute names read here (dtype,
precision, dot_general, promote_dtype, strides, padding, ...), so both integrations call these
functions with the layer whose forward pass they replace.

A served layer computes what Flax computes with the default computation: inputs, kernel and
bias promoted to the layer's ``dtype`` (default: their promoted dtype), the default precision,
``lax.dot_general``. A layer configured otherwise (``precision``, ``dot_general`` /
``dot_general_cls``, a custom convolution, ``preferred_element_type``, a custom
``promote_dtype``) would compute
differently from the block-sparse product, so it is refused with an error naming it: leave such
layers dense (``where=``).
"""

import math

import jax
import jax.numpy as jnp
from flax.linen import dtypes as linen_dtypes
from flax.linen.linear import canonicalize_padding
from flax.nnx.nn import dtypes as nnx_dtypes
from jax import lax

from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import is_qarray
from lscjax._src.sparse.conv import conv
from lscjax._src.sparse.embed import lookup
from lscjax._src.sparse.matmul import matmul
from lscjax._src.sparse.multi_axis import served_matrix

_DEFAULT_PROMOTE = (linen_dtypes.promote_dtype, nnx_dtypes.promote_dtype)


def check_served(layer, path: str) -> None:
    """Raise LscError naming `path` if `layer` customises its computation in a way the served
    form does not reproduce (see the module docstring)."""
    custom = []
    if getattr(layer, "precision", None) is not None:
        custom.append(f"precision={layer.precision!r}")
    if getattr(layer, "dot_general", None) not in (None, lax.dot_general):
        custom.append("dot_general")
    if getattr(layer, "dot_general_cls", None) is not None:
        custom.append("dot_general_cls")
    if getattr(layer, "conv_general_dilated", None) not in (None, lax.conv_general_dilated):
        custom.append("conv_general_dilated")
    if getattr(layer, "conv_general_dilated_cls", None) is not None:
        custom.append("conv_general_dilated_cls")
    if getattr(layer, "preferred_element_type", None) is not None:
        custom.append(f"preferred_element_type={layer.preferred_element_type!r}")
    if getattr(layer, "promote_dtype", _DEFAULT_PROMOTE[0]) not in _DEFAULT_PROMOTE:
        custom.append("promote_dtype")
    if custom:
        raise LscError(
            f"layer {path!r} ({type(layer).__name__}) sets {', '.join(custom)}, which the "
            "compressed form does not reproduce (it computes with the default precision and "
            "lax.dot_general); keep this layer dense (where=)"
        )


def _out_dtype(layer, x, kernel, bias):
    if getattr(layer, "dtype", None) is not None:
        return jnp.dtype(layer.dtype)
    dtypes = [x.dtype, kernel.dtype] + ([] if bias is None else [bias.dtype])
    return jnp.result_type(*dtypes)


def _add_bias(y, bias, dtype):
    y = y.astype(dtype)
    return y if bias is None else y + bias.astype(dtype)


def contract(layer, x, kernel, bias, axis, *, path: str, impl: str, interpret: bool):
    """``dot_general(x, kernel)`` over the input axes `axis` (in kernel axis order) plus bias.

    Args:
      layer: the Flax layer (its ``dtype`` sets the computation dtype, as in Flax).
      x: float [...]; the axes `axis` have the kernel's leading (contracted) sizes.
      kernel: BlockSparse or MultiAxisKernel of shape (*contracted, *features).
      bias: [*features] (or any shape of that size) or None.
      axis: the contracted input axes, in kernel axis order (negative counts from the end).
      path: the layer path, named in errors.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      [*the other axes of x in order, *features] of the layer's dtype.

    Raises:
      LscError: the kernel's matrix view contracts another number of axes (or other sizes).
    """
    check_served(layer, path)
    matrix, in_ndim = served_matrix(kernel)
    x = jnp.asarray(x)
    axis = tuple(a % x.ndim for a in axis)
    shape = tuple(kernel.shape)
    if len(axis) != in_ndim or tuple(x.shape[a] for a in axis) != shape[:in_ndim]:
        raise LscError(
            f"layer {path!r}: its kernel {shape} is served as the matrix of its first "
            f"{in_ndim} axes by the rest, but the layer contracts input axes {axis} of an input "
            f"of shape {x.shape}; convert this kernel with in_axes= giving the number of axes "
            "the layer contracts"
        )
    free = [a for a in range(x.ndim) if a not in axis]
    order = (*free, *axis)
    if order != tuple(range(x.ndim)):
        x = jnp.transpose(x, order)
    lead = x.shape[: len(free)]
    dtype = _out_dtype(layer, x, kernel, bias)
    flat = x.reshape(*lead, math.prod(shape[:in_ndim])).astype(dtype)
    y = matmul(flat, matrix, impl=impl, interpret=interpret).reshape(*lead, *shape[in_ndim:])
    return _add_bias(y, None if bias is None else bias.reshape(shape[in_ndim:]), dtype)


def dense(layer, x, kernel, bias, *, path: str, impl: str, interpret: bool) -> jax.Array:
    """The forward pass of `layer` (a Dense / Linear): ``x @ kernel + bias``.

    Args:
      layer: the Flax layer.
      x: float [..., in]; kernel: BlockSparse of shape (in, out); bias: [out] or None.
      path: the layer path, named in errors.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      [..., out] of the layer's dtype (default: the promoted dtype of x, kernel and bias).
    """
    return contract(layer, x, kernel, bias, (-1,), path=path, impl=impl, interpret=interpret)


def dense_general(layer, x, kernel, bias, *, path: str, impl: str, interpret: bool):
    """The forward pass of `layer` (``nn.DenseGeneral`` / ``nnx.LinearGeneral``, no batch axes).

    Args:
      layer: the layer; its ``axis`` names the contracted input axes.
      x: float [...]; kernel: BlockSparse or MultiAxisKernel [*contracted, *features];
      bias: [*features] or None.
      path: the layer path, named in errors.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      [*the other axes of x, *features] of the layer's dtype, as Flax computes it.

    Raises:
      LscError: batch axes (``batch_dims`` / ``batch_axis``), or see `contract`.
    """
    if getattr(layer, "batch_dims", ()) or getattr(layer, "batch_axis", {}):
        raise LscError(f"layer {path!r}: a DenseGeneral with batch axes is not served block-sparse")
    axis = layer.axis if isinstance(layer.axis, tuple | list) else (layer.axis,)
    return contract(layer, x, kernel, bias, tuple(axis), path=path, impl=impl, interpret=interpret)


def _einsum_operands(spec: str, x_ndim: int, path: str) -> tuple[str, str, str]:
    """(lhs, rhs, out) index strings of an explicit two-operand einsum, '...' spelt out."""
    spec = spec.replace(" ", "")
    if "->" not in spec or spec.count(",") != 1:
        raise LscError(f"layer {path!r}: einsum {spec!r} is not an explicit two-operand einsum")
    operands, out = spec.split("->")
    lhs, rhs = operands.split(",")
    if "..." in rhs:
        raise LscError(f"layer {path!r}: einsum {spec!r}: an ellipsis in the kernel is not served")
    if "..." in lhs:
        unused = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in spec]
        fill = "".join(unused[: x_ndim - (len(lhs) - 3)])
        lhs, out = lhs.replace("...", fill), out.replace("...", fill)
    return lhs, rhs, out


def einsum_matmul(spec: str, x_ndim: int, *, path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """How an ``nn.Einsum`` is a matmul: (x's contracted axes in kernel order, the permutation
    from [free x axes, kernel features] to the einsum's output order).

    The einsum must contract x's axes with the kernel's leading axes, keep every other kernel axis
    and every other x axis in the output once, and have no axis shared by all three operands
    (batch), none summed within one operand and none repeated.

    Raises:
      LscError: any other einsum (the message names the layer `path` and the rule it breaks).
    """
    lhs, rhs, out = _einsum_operands(spec, x_ndim, path)

    def refuse(why: str):
        raise LscError(f"layer {path!r}: einsum '{lhs},{rhs}->{out}' is not a matmul: {why}")

    if any(len(set(s)) != len(s) for s in (lhs, rhs, out)):
        refuse("an index repeats within an operand")
    if len(lhs) != x_ndim:
        refuse(f"the input has {x_ndim} axes")
    if set(lhs) & set(rhs) & set(out):
        refuse("an index is shared by input, kernel and output (a batch axis)")
    if (set(lhs) | set(rhs)) - set(out) - (set(lhs) & set(rhs)) or set(out) - set(lhs) - set(rhs):
        refuse("an index is summed within one operand or appears only in the output")
    contracted = [c for c in rhs if c in lhs]
    if rhs[: len(contracted)] != "".join(contracted):
        refuse("the kernel's contracted axes must be its leading axes")
    free = [c for c in lhs if c in out]
    produced = free + [c for c in rhs if c in out]
    return tuple(lhs.index(c) for c in contracted), tuple(produced.index(c) for c in out)


def einsum(layer, x, kernel, bias, einsum_str: str, *, path: str, impl: str, interpret: bool):
    """The forward pass of `layer` (``nn.Einsum`` whose einsum is a matmul, `einsum_matmul`).

    Args:
      layer: the Einsum layer; x: float [...]; kernel: BlockSparse or MultiAxisKernel of the
        layer's ``shape``; bias: the layer's bias (the output axes of the kernel) or None.
      einsum_str: the layer's einsum.
      path: the layer path, named in errors.
      impl, interpret: passed to `lscjax.sparse.matmul`.

    Returns:
      The einsum's output plus bias, of the layer's dtype.

    Raises:
      LscError: an einsum that is not a matmul, or see `contract`.
    """
    x = jnp.asarray(x)
    axis, perm = einsum_matmul(einsum_str, x.ndim, path=path)
    y = contract(layer, x, kernel, None, axis, path=path, impl=impl, interpret=interpret)
    y = jnp.transpose(y, perm) if perm != tuple(range(y.ndim)) else y
    if bias is None:
        return y
    lhs, rhs, out = _einsum_operands(einsum_str, x.ndim, path)
    shape = [y.shape[i] if c in rhs else 1 for i, c in enumerate(out)]
    return y + bias.reshape(shape).astype(y.dtype)


def embed(layer, ids, table, *, path: str) -> jax.Array:
    """The forward pass of `layer` (an Embed) with a quantized `table`: `lookup`, in the layer's
    dtype (default: the table's, float32 for codes)."""
    check_served(layer, path)
    rows = lookup(table, ids, path=path)
    dtype = getattr(layer, "dtype", None)
    return rows if dtype is None else rows.astype(dtype)


def attend(layer, query, table, *, path: str) -> jax.Array:
    """``Embed.attend``: ``query @ table.T`` with the table dequantized in the computation (the
    product reads every row, so there is no lookup to save).

    Args:
      layer: the Embed layer; query: float [..., dim]; table: QArray (vocab, dim) or float.
      path: the layer path, named in errors.

    Returns:
      [..., vocab] in the promoted dtype of query and table (or the layer's dtype).
    """
    check_served(layer, path)
    weights = table.dequantize() if is_qarray(table) else jnp.asarray(table)
    dtype = _out_dtype(layer, jnp.asarray(query), weights, None)
    return jnp.dot(jnp.asarray(query).astype(dtype), weights.astype(dtype).T)


def conv_layer(layer, x, kernel, bias, *, path: str, impl: str, interpret: bool):
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
      LscError: feature groups, a mask, or CIRCULAR/CAUSAL padding (not served block-sparse), or
        a customised computation (`check_served`).
    """
    check_served(layer, path)
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
