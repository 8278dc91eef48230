"""Serve an unmodified Linen model from its compressed form (method interception): Dense,
DenseGeneral, Einsum and Conv layers from block-sparse kernels, Embed from quantized tables."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax

from lscjax._src.errors import LscError
from lscjax._src.flax import layers
from lscjax._src.quant.qarray import is_qarray
from lscjax._src.sparse.leaf import (
    DEFAULT_MAX_DENSITY,
    TABLE,
    InAxes,
    check_max_density,
    dense_leaf,
    leaf_in_ndim,
    served_leaf,
)
from lscjax._src.sparse.multi_axis import is_block_sparse
from lscjax._src.sparse.plan import IMPLS
from lscjax._src.tree import Where, leaves_with_paths, path_str, selection, shape_proxy


def _shape_proxy(leaf):
    """A QArray seen by `where=` as a zero-cost array of its dense shape."""
    return shape_proxy(leaf.shape) if is_qarray(leaf) else leaf


def to_block_sparse(
    params,
    block=(32, 32),
    *,
    where: Where = None,
    max_density: float = DEFAULT_MAX_DENSITY,
    stacked: Where = None,
    in_axes: InAxes = None,
):
    """Replace the selected kernels of `params` by their served form (block-sparse or dense).

    Args:
      params: a parameter pytree (e.g. Linen ``variables["params"]``) whose selected leaves are
        concrete float kernels (Dense [in, out], DenseGeneral / Einsum ``[*in, *features]``,
        Conv ``[*window, in, out]``) or `QArray` leaves.
      block: b or (b_in, b_out), the block of every converted kernel.
      where: selection (default: leaves named 'kernel' with ndim >= 2; a QArray counts as an
        array of its dense shape). Selected Embed tables (leaves named 'embedding') are kept as
        they are: a QArray table is looked up from its codes by `compressed_apply`.
      max_density: a selected kernel with a larger fraction of non-zero blocks
        (`BlockSparse.block_density`) is served dense (a QArray dequantized once): nearly dense
        kernels multiply faster dense. The default, DEFAULT_MAX_DENSITY, is measured by
        benchmarks/serve_density.py (docs/results/serving.md).
      stacked: selection (same forms as `where`; default: none) of the selected kernels whose
        leading axis stacks layers, as Linen's ``nn.scan`` / ``nn.vmap`` with
        ``variable_axes={"params": 0}`` store them ([L, in, out]): each layer's kernel is
        converted and the L BlockSparse are stacked with `lscjax.sparse.stack`, which the lifted
        transform slices back per layer. For `max_density`, a stack's density is that of all
        its layers' blocks together.
      in_axes: how many leading axes each kernel's layer contracts, as ``{path: n}`` or
        ``(path, leaf) -> n | None``; where it gives None, the rank of the layer's bias says
        (the kernel minus the bias axes: 1 for attention's query / key / value [in, heads,
        head_dim]), else all axes but the last. A kernel with several output axes becomes a
        `lscjax.sparse.MultiAxisKernel` (see there for the matrix view).

    Returns:
      The params with BlockSparse / MultiAxisKernel at the selected kernels (QArray -> coded
      blocks via `BlockSparse.from_qarray`), dense arrays where they are denser than
      `max_density`, other leaves unchanged.

    Raises:
      LscError: a selected leaf that is not a float array or QArray, or has NaN/Inf; bad `block`
        or `in_axes` (the message names the leaf path); `max_density` outside [0, 1]; a
        selection that matches no leaf.
    """
    check_max_density(max_density)
    proxy = jax.tree_util.tree_map(_shape_proxy, params, is_leaf=is_qarray)
    chosen = selection(proxy, where)
    layered = {} if stacked is None else selection(proxy, stacked, allow_empty=True)
    flat = dict(leaves_with_paths(params, is_qarray))

    def convert(kp, leaf):
        path = path_str(kp)
        if leaf is None or not chosen.get(path, False) or path.rsplit("/", 1)[-1] == TABLE:
            return leaf
        layers_ = layered.get(path, False)
        in_ndim = leaf_in_ndim(path, flat, in_axes, layers_)
        return served_leaf(
            path, leaf, block, max_density=max_density, stacked=layers_, in_ndim=in_ndim
        )

    return jax.tree_util.tree_map_with_path(
        convert, params, is_leaf=lambda x: x is None or is_qarray(x)
    )


def to_dense(params):
    """Replace every block-sparse kernel of `params` (`BlockSparse`, `MultiAxisKernel`) by its
    dense kernel (``todense()``) and every `QArray` by its dequantized array."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.todense() if is_block_sparse(leaf) else dense_leaf(leaf),
        params,
        is_leaf=lambda x: is_block_sparse(x) or is_qarray(x),
    )


def _serve(module, method: str, args, kwargs, *, impl: str, interpret: bool):
    """The served result of `module`'s `method`, or NotImplemented when Flax's own applies."""
    path = "/".join(module.scope.path)
    if isinstance(module, nn.Embed) and module.has_variable("params", TABLE):
        table = module.get_variable("params", TABLE)
        if not is_qarray(table):
            if is_block_sparse(table):
                raise LscError(
                    f"layer {path!r}: an Embed table is looked up from codes (a QArray), "
                    "not from a BlockSparse; leave the table out of the block-sparse selection"
                )
            return NotImplemented
        if method == "setup":  # Flax's setup would check the table's shape: it is codes
            return None
        if method == "attend":
            return layers.attend(module, *args, table, path=path, **kwargs)
        return layers.embed(module, *args, table, path=path, **kwargs)
    if method != "__call__" or not module.has_variable("params", "kernel"):
        return NotImplemented
    kernel = module.get_variable("params", "kernel")
    if not is_block_sparse(kernel):
        return NotImplemented
    bias = module.get_variable("params", "bias") if module.has_variable("params", "bias") else None
    common = dict(path=path, impl=impl, interpret=interpret)
    if isinstance(module, nn.Dense):
        return layers.dense(module, args[0], kernel, bias, **common)
    if isinstance(module, nn.DenseGeneral):
        return layers.dense_general(module, args[0], kernel, bias, **common)
    if isinstance(module, nn.Einsum):
        spec = kwargs.get("einsum_str", args[1] if len(args) > 1 else None) or module.einsum_str
        return layers.einsum(module, args[0], kernel, bias, spec, **common)
    if isinstance(module, nn.Conv):
        return layers.conv_layer(module, args[0], kernel, bias, **common)
    raise LscError(
        f"layer {path!r}: a block-sparse kernel in a {type(module).__name__}, which is not "
        "served block-sparse (supported: nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)"
    )


def _interceptor(impl: str, interpret: bool):
    def intercept(next_fun, args, kwargs, context):
        if context.method_name not in ("__call__", "setup", "attend"):
            return next_fun(*args, **kwargs)
        served = _serve(
            context.module, context.method_name, args, kwargs, impl=impl, interpret=interpret
        )
        return next_fun(*args, **kwargs) if served is NotImplemented else served

    return intercept


def compressed_apply(apply_fn: Callable, *, impl: str = "auto", interpret: bool = False):
    """Wrap a Linen ``apply`` so that layers with compressed parameters run from them.

    Served: ``nn.Dense``, ``nn.DenseGeneral`` (no ``batch_dims``), ``nn.Einsum`` whose einsum
    is a matmul and ``nn.Conv`` (and their subclasses) with a `BlockSparse` /
    `lscjax.sparse.MultiAxisKernel` kernel, through `lscjax.sparse.matmul`; ``nn.Embed`` with a
    `QArray` table, looked up from its codes (`lscjax.sparse.lookup`; ``attend`` dequantizes
    the table in the product). Layers with other parameters run as Flax runs them.

    The interceptor (``nn.intercept_methods``) is entered INSIDE the returned function, so jitting
    the returned function traces it every time: an interceptor opened outside ``jax.jit`` would be
    silently skipped on cache hits. Pass the un-jitted ``model.apply`` and jit the result.

    Args:
      apply_fn: ``model.apply`` of an unmodified Linen model.
      impl, interpret: passed to `lscjax.sparse.matmul` for every converted layer.

    Returns:
      A function with `apply_fn`'s signature; the variables may hold compressed kernels (from
      `to_block_sparse` or ``lscjax.load(..., layout="block_sparse")``). Its outputs equal
      dense apply on the decoded weights.

    Raises:
      LscError: bad `impl`; at call time, a block-sparse kernel in an unsupported layer, a
        layer whose computation is customised (precision, dot_general, ...; see
        `lscjax._src.flax.layers`), an einsum that is not a matmul, a kernel converted with
        another matrix view than its layer contracts.

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
