"""Serve an unmodified Linen model from BlockSparse kernels (method interception)."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from lscjax._src.errors import LscError
from lscjax._src.flax.layers import block_sparse_leaf, check_max_density, conv_layer, dense
from lscjax._src.quant.qarray import is_qarray
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.matmul import IMPLS
from lscjax._src.tree import Where, path_str, selection, shape_proxy


def _shape_proxy(leaf):
    """A QArray seen by `where=` as a zero-cost array of its dense shape."""
    return shape_proxy(leaf.shape) if is_qarray(leaf) else leaf


def to_block_sparse(
    params,
    block=(32, 32),
    *,
    where: Where = None,
    max_density: float = 1.0,
    stacked: Where = None,
):
    """Replace the selected kernels of `params` by `BlockSparse` (float values or codes).

    Args:
      params: a parameter pytree (e.g. Linen ``variables["params"]``) whose selected leaves are
        concrete float kernels (Dense [in, out], Conv ``[*window, in, out]``) or `QArray` leaves.
      block: b or (b_in, b_out), the block of every converted kernel.
      where: selection (default: leaves named 'kernel' with ndim >= 2; a QArray counts as an
        array of its dense shape).
      max_density: a selected kernel with a larger fraction of non-zero blocks
        (`BlockSparse.block_density`) stays as it is. Nearly dense kernels are faster dense: on
        CPU the block-sparse product takes 0.35-0.94 of the dense time at 25% of the blocks of a
        4096^2 kernel, and LeNet-5's conv1 with all its blocks is several times slower than
        dense at large batches (docs/results/sparse.md).
      stacked: selection (same forms as `where`; default: none) of the selected kernels whose
        leading axis stacks layers, as Linen's ``nn.scan`` / ``nn.vmap`` with
        ``variable_axes={"params": 0}`` store them ([L, in, out]): each layer's kernel is
        converted and the L BlockSparse are stacked with `lscjax.sparse.stack`, which the lifted
        transform slices back per layer. For `max_density`, a stack's density is that of all
        its layers' blocks together.

    Returns:
      The params with BlockSparse at the selected leaves (QArray -> coded blocks via
      `BlockSparse.from_qarray`), other leaves unchanged.

    Raises:
      LscError: a selected leaf that is not a float array or QArray, or has NaN/Inf; bad `block`
        (the message names the leaf path); `max_density` outside [0, 1].
    """
    check_max_density(max_density)
    proxy = jax.tree_util.tree_map(_shape_proxy, params, is_leaf=is_qarray)
    chosen = selection(proxy, where)
    layered = {} if stacked is None else selection(proxy, stacked, allow_empty=True)

    def convert(kp, leaf):
        path = path_str(kp)
        if leaf is None or not chosen.get(path, False):
            return leaf
        w = block_sparse_leaf(path, leaf, block, stacked=layered.get(path, False))
        return w if w.block_density <= max_density else leaf

    return jax.tree_util.tree_map_with_path(
        convert, params, is_leaf=lambda x: x is None or is_qarray(x)
    )


def _is_block_sparse(x) -> bool:
    return isinstance(x, BlockSparse)


def to_dense(params):
    """Replace every `BlockSparse` leaf of `params` by its dense kernel (``todense()``)."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.todense() if _is_block_sparse(leaf) else leaf,
        params,
        is_leaf=_is_block_sparse,
    )


def _interceptor(impl: str, interpret: bool):
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not module.has_variable("params", "kernel"):
            return next_fun(*args, **kwargs)
        kernel = module.get_variable("params", "kernel")
        if not _is_block_sparse(kernel):
            return next_fun(*args, **kwargs)
        path = "/".join(module.scope.path)
        bias = (
            module.get_variable("params", "bias") if module.has_variable("params", "bias") else None
        )
        if type(module) is nn.Dense:
            return dense(module, args[0], kernel, bias, impl=impl, interpret=interpret)
        if type(module) is nn.Conv:
            return conv_layer(
                module, args[0], kernel, bias, path=path, impl=impl, interpret=interpret
            )
        raise LscError(
            f"layer {path!r}: a BlockSparse kernel in a {type(module).__name__}, which is not "
            "served block-sparse (supported: nn.Dense, nn.Conv)"
        )

    return intercept


def compressed_apply(apply_fn: Callable, *, impl: str = "auto", interpret: bool = False):
    """Wrap a Linen ``apply`` so that Dense / Conv layers with BlockSparse kernels run block-sparse.

    The interceptor (``nn.intercept_methods``) is entered INSIDE the returned function, so jitting
    the returned function traces it every time: an interceptor opened outside ``jax.jit`` would be
    silently skipped on cache hits. Pass the un-jitted ``model.apply`` and jit the result.

    Args:
      apply_fn: ``model.apply`` of an unmodified Linen model.
      impl, interpret: passed to `lscjax.sparse.matmul` for every converted layer.

    Returns:
      A function with `apply_fn`'s signature; the variables' kernels may be BlockSparse (from
      `to_block_sparse`). Its outputs equal dense apply on the decoded weights.

    Raises:
      LscError: bad `impl`; at call time, a BlockSparse kernel in an unsupported layer.

    Example:
      >>> sparse = {"params": lscjax.flax.to_block_sparse(variables["params"], block=16)}
      >>> predict = jax.jit(lscjax.flax.compressed_apply(model.apply))
      >>> logits = predict(sparse, images)
    """
    if impl not in IMPLS:
        raise LscError(f"impl must be one of {IMPLS}, got {impl!r}")
    intercept = _interceptor(impl, interpret)

    @functools.wraps(apply_fn)
    def apply(*args, **kwargs):
        with nn.intercept_methods(intercept):
            return apply_fn(*args, **kwargs)

    return apply
