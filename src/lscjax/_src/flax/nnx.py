"""Serve an NNX model from its compressed form by swapping its modules: Linear, LinearGeneral and
Conv for block-sparse ones, Embed for one that looks rows up from k-means codes."""

from collections.abc import Callable, Mapping

import jax
from flax import nnx

from lscjax._src.errors import LscError
from lscjax._src.flax import layers
from lscjax._src.quant.qarray import QArray, is_qarray
from lscjax._src.sparse.leaf import DEFAULT_MAX_DENSITY, check_max_density, served_leaf
from lscjax._src.sparse.multi_axis import MultiAxisKernel, is_block_sparse, served_matrix
from lscjax._src.sparse.plan import IMPLS
from lscjax._src.tree import key_name, leaves_with_paths


class BlockLayout(nnx.Variable):
    """A non-trainable array of a compressed layer: indices, counts, or integer codes."""


def _variable(a):
    """Float arrays are trainable (nnx.Param), integer ones (codes, indices, counts) BlockLayout."""
    return nnx.Param(a) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else BlockLayout(a)


class BlockSparseLinear(nnx.Module):
    """`nnx.Linear` / `nnx.LinearGeneral` served from a block-sparse kernel.

    The kernel's arrays are the module's variables, named by their field paths in the kernel's
    `BlockSparse` (``blocks``, ``indices``, ``counts``, ``codebook``, ``overflow_blocks``,
    ``overflow_indices``, ``overflow_rows``; absent when the kernel has none): float arrays (block
    values [R, Kmax, b_in, b_out], codebook [n_codes]) are ``nnx.Param``, integer ones (uint8
    codes, int32 indices [R, Kmax] and counts [R]) `BlockLayout`. ``bias`` (nnx.Param
    ``[*features]``) or None. Fine-tuning with ``nnx.Param`` filters trains the block values /
    codebook and the bias.
    """

    def __init__(self, layer, kernel, *, path: str, impl: str, interpret: bool):
        layers.check_served(layer, path)
        if getattr(layer, "batch_axis", None):
            raise LscError(
                f"layer {path!r}: a LinearGeneral with batch axes is not served block-sparse"
            )
        matrix, self.in_ndim = served_matrix(kernel)
        flat, self.layout = jax.tree_util.tree_flatten_with_path(matrix)
        self.names = tuple("_".join(key_name(k) for k in kp) for kp, _ in flat)
        for name, (_, array) in zip(self.names, flat, strict=True):
            setattr(self, name, _variable(array))
        self.bias = None if layer.bias is None else nnx.Param(layer.bias[...])
        self.shape = tuple(kernel.shape)
        self.axis = tuple(getattr(layer, "axis", (-1,)))
        self.dtype = layer.dtype
        self.path, self.impl, self.interpret = path, impl, interpret

    def kernel(self):
        """The layer's kernel (BlockSparse, or MultiAxisKernel for several output axes) of the
        current variable values."""
        arrays = [getattr(self, name)[...] for name in self.names]
        matrix = jax.tree_util.tree_unflatten(self.layout, arrays)
        if self.in_ndim == len(self.shape) - 1:
            return matrix
        return MultiAxisKernel(matrix, self.shape, self.in_ndim)

    def _bias(self):
        return None if self.bias is None else self.bias[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x float ``[..., *in]`` -> ``[..., *out]`` (the contracted axes are the layer's ``axis``)."""
        return layers.contract(
            self,
            x,
            self.kernel(),
            self._bias(),
            self.axis,
            path=self.path,
            impl=self.impl,
            interpret=self.interpret,
        )


class BlockSparseConv(BlockSparseLinear):
    """`nnx.Conv` served from a `BlockSparse` kernel ``[*window, in, out]`` (patches + matmul)."""

    def __init__(self, layer, kernel, *, path: str, impl: str, interpret: bool):
        if layer.feature_group_count != 1 or layer.mask is not None:
            raise LscError(f"layer {path!r}: grouped or masked Conv is not served block-sparse")
        super().__init__(layer, kernel, path=path, impl=impl, interpret=interpret)
        self.strides, self.padding = layer.strides, layer.padding
        self.input_dilation, self.kernel_dilation = layer.input_dilation, layer.kernel_dilation
        self.feature_group_count, self.mask = 1, None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x float [*batch, *spatial, in] -> [*batch, *out_spatial, out], as `nnx.Conv`."""
        return layers.conv_layer(
            self,
            x,
            self.kernel(),
            self._bias(),
            path=self.path,
            impl=self.impl,
            interpret=self.interpret,
        )


class CodedEmbed(nnx.Module):
    """`nnx.Embed` served from a quantized table: rows looked up from the codes.

    Variables: ``codes`` (BlockLayout, uint8/uint16, the QArray's codes), ``codebook``
    (nnx.Param float32, trainable). Static: the QArray's method, bits and shape (vocab, dim).
    """

    def __init__(self, layer, table: QArray, *, path: str):
        layers.check_served(layer, path)
        self.codes, self.codebook = BlockLayout(table.codes), nnx.Param(table.codebook)
        self.method, self.bits, self.shape = table.method, table.bits, tuple(table.shape)
        self.dtype, self.path = layer.dtype, path

    def table(self) -> QArray:
        """The table as a QArray of the current variable values."""
        return QArray(self.codes[...], self.codebook[...], self.method, self.bits, self.shape)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids int [...] -> rows [..., dim] of the layer's dtype (`lscjax.sparse.lookup`)."""
        return layers.embed(self, ids, self.table(), path=self.path)

    def attend(self, query: jax.Array) -> jax.Array:
        """query float [..., dim] -> [..., vocab]: ``query @ table.T``, as `nnx.Embed.attend`."""
        return layers.attend(self, query, self.table(), path=self.path)


def _axes(node) -> tuple[int, int]:
    """(rank, contracted axes) of one layer's kernel: Linear 2 and 1, LinearGeneral its batch,
    in and out features and its in features, Conv ``[*window, in, out]`` and window + in."""
    if isinstance(node, nnx.LinearGeneral):
        rank = len(node.batch_axis) + len(node.in_features) + len(node.out_features)
        return rank, len(node.in_features)
    if isinstance(node, nnx.Conv):
        return len(node.kernel_size) + 2, len(node.kernel_size) + 1
    return 2, 1


def to_block_sparse_nnx(
    model: nnx.Module,
    block=(32, 32),
    *,
    where: Callable[[str, nnx.Module], bool] | None = None,
    impl: str = "auto",
    interpret: bool = False,
    max_density: float = DEFAULT_MAX_DENSITY,
    stacked: Callable[[str, nnx.Module], bool] | None = None,
    params: Mapping | None = None,
) -> nnx.Module:
    """A copy of `model` whose layers run from their compressed form.

    Each selected ``nnx.Linear`` / ``nnx.LinearGeneral`` / ``nnx.Conv`` (and subclasses) is
    swapped (``nnx.recursive_map``) for a `BlockSparseLinear` / `BlockSparseConv` holding its
    kernel's block-sparse form (float blocks, or codes where `params` gives a QArray), unless the
    kernel is denser than `max_density`; each ``nnx.Embed`` whose table `params` gives as a
    QArray becomes a `CodedEmbed`. Outputs equal the model's on the same (decoded) weights.
    `model` itself is left unchanged.

    Args:
      model: an NNX module with concrete weights.
      block: b or (b_in, b_out).
      where: ``(path, layer) -> bool`` choosing layers ('/'-joined attribute path, e.g.
        'layers/0'); default: every Linear, LinearGeneral, Conv, and Embed with a QArray table.
      impl, interpret: passed to `lscjax.sparse.matmul` by the swapped layers.
      max_density: a selected layer whose kernel has a larger fraction of non-zero blocks
        (`BlockSparse.block_density`) keeps a dense kernel (a QArray's dequantized) (see
        `lscjax.flax.to_block_sparse`).
      stacked: ``(path, layer) -> bool`` choosing the selected layers that hold L layers
        stacked on a leading axis (made by ``nnx.vmap``, run by ``nnx.scan``): each layer's
        kernel is converted and the L BlockSparse stacked (`lscjax.sparse.stack`), so the
        swapped module slices back per layer under the scan; default: none.
      params: the weights to serve, as nested dicts keyed like
        ``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` (e.g. 'layers/0/kernel'), whose
        leaves may be `QArray` leaves (``lscjax.load(..., layout="quantized")`` of a file compressed
        from that dict); layers missing from it use their own weights. Default: the model's.

    Returns:
      The swapped model (a new module graph).

    Raises:
      LscError: bad `impl` or `max_density`, a kernel that is not float or has NaN/Inf, a
        grouped or masked Conv, a layer with batch axes or a customised computation
        (precision, dot_general, ...), a kernel whose rank does not fit the layer (a stack of
        layers not chosen by `stacked`; the message names the layer path).
    """
    if impl not in IMPLS:
        raise LscError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_max_density(max_density)
    given = {} if params is None else dict(leaves_with_paths(params, is_qarray))

    def swap(parts, node):
        if not isinstance(node, nnx.Linear | nnx.LinearGeneral | nnx.Conv | nnx.Embed):
            return node
        path = "/".join(str(p) for p in parts)
        if where is not None and not where(path, node):
            return node
        if isinstance(node, nnx.Embed):
            table = given.get(f"{path}/embedding")
            return CodedEmbed(node, table, path=path) if is_qarray(table) else node
        weight = given.get(f"{path}/kernel", node.kernel[...])
        if tuple(weight.shape) != tuple(node.kernel.shape):
            raise LscError(
                f"layer {path!r}: params give a kernel of shape {tuple(weight.shape)}, the "
                f"layer's is {tuple(node.kernel.shape)}"
            )
        layers_ = stacked is not None and stacked(path, node)
        rank, in_ndim = _axes(node)
        if len(weight.shape) != rank + layers_:
            raise LscError(
                f"layer {path!r}: kernel of shape {tuple(weight.shape)} does not have the rank "
                f"{rank + layers_} of {'a stack of ' if layers_ else 'one '}"
                f"{type(node).__name__} kernel{'s' if layers_ else ''} (layers stacked by "
                "nnx.vmap need stacked=)"
            )
        kernel = served_leaf(
            path + "/kernel",
            weight,
            block,
            max_density=max_density,
            stacked=layers_,
            in_ndim=in_ndim,
        )
        if not is_block_sparse(kernel):
            node.kernel[...] = kernel  # served dense: the given weights, dequantized once
            return node
        cls = BlockSparseConv if isinstance(node, nnx.Conv) else BlockSparseLinear
        return cls(node, kernel, path=path, impl=impl, interpret=interpret)

    return nnx.recursive_map(swap, nnx.clone(model))
