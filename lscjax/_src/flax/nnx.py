"""Serve an NNX model from BlockSparse kernels by swapping its Linear / Conv modules."""

from collections.abc import Callable

import jax
from flax import nnx

from lscjax._src.errors import LscError
from lscjax._src.flax.layers import block_sparse_leaf, check_max_density, conv_layer, dense
from lscjax._src.sparse.block_sparse import BlockSparse, Overflow
from lscjax._src.sparse.matmul import IMPLS


class BlockLayout(nnx.Variable):
    """A non-trainable array of a block-sparse layer: indices, counts, or integer codes."""


class BlockSparseLinear(nnx.Module):
    """`nnx.Linear` served from a `BlockSparse` kernel.

    Variables: ``blocks`` (nnx.Param of float values [R, Kmax, b_in, b_out], or BlockLayout of
    uint8 codes), ``indices`` int32 [R, Kmax] and ``counts`` int32 [R] (BlockLayout),
    ``overflow_blocks``, ``overflow_indices`` and ``overflow_rows`` (the kernel's `Overflow`,
    stored like blocks, indices and counts; None without one), ``codebook`` (nnx.Param float
    [n_codes], or None), ``bias`` (nnx.Param [out], or None). Fine-tuning with ``nnx.Param``
    filters trains the block values / codebook and the bias.
    """

    def __init__(self, layer, kernel: BlockSparse, *, path: str, impl: str, interpret: bool):
        values = nnx.Param if kernel.bits is None else BlockLayout
        self.blocks = values(kernel.blocks)
        self.indices = BlockLayout(kernel.indices)
        self.counts = BlockLayout(kernel.counts)
        overflow = kernel.overflow
        self.overflow_blocks = None if overflow is None else values(overflow.blocks)
        self.overflow_indices = None if overflow is None else BlockLayout(overflow.indices)
        self.overflow_rows = None if overflow is None else BlockLayout(overflow.rows)
        self.codebook = None if kernel.codebook is None else nnx.Param(kernel.codebook)
        self.bias = None if layer.bias is None else nnx.Param(layer.bias[...])
        self.shape, self.block, self.bits = tuple(kernel.shape), tuple(kernel.block), kernel.bits
        self.row_groups = kernel.row_groups
        self.dtype = layer.dtype
        self.path, self.impl, self.interpret = path, impl, interpret

    def kernel(self) -> BlockSparse:
        """The layer's kernel as a BlockSparse (of the current variable values)."""
        codebook = None if self.codebook is None else self.codebook[...]
        overflow = None
        if self.overflow_blocks is not None:
            overflow = Overflow(
                self.overflow_blocks[...], self.overflow_indices[...], self.overflow_rows[...]
            )
        return BlockSparse(
            self.blocks[...],
            self.indices[...],
            self.counts[...],
            codebook,
            self.shape,
            self.block,
            self.bits,
            row_groups=self.row_groups,
            overflow=overflow,
        )

    def _bias(self):
        return None if self.bias is None else self.bias[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        """x float [..., in] -> [..., out]."""
        return dense(self, x, self.kernel(), self._bias(), impl=self.impl, interpret=self.interpret)


class BlockSparseConv(BlockSparseLinear):
    """`nnx.Conv` served from a `BlockSparse` kernel ``[*window, in, out]`` (patches + matmul)."""

    def __init__(self, layer, kernel: BlockSparse, *, path: str, impl: str, interpret: bool):
        if layer.feature_group_count != 1 or layer.mask is not None:
            raise LscError(f"layer {path!r}: grouped or masked Conv is not served block-sparse")
        super().__init__(layer, kernel, path=path, impl=impl, interpret=interpret)
        self.strides, self.padding = layer.strides, layer.padding
        self.input_dilation, self.kernel_dilation = layer.input_dilation, layer.kernel_dilation
        self.feature_group_count, self.mask = 1, None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x float [*batch, *spatial, in] -> [*batch, *out_spatial, out], as `nnx.Conv`."""
        return conv_layer(
            self,
            x,
            self.kernel(),
            self._bias(),
            path=self.path,
            impl=self.impl,
            interpret=self.interpret,
        )


def to_block_sparse_nnx(
    model: nnx.Module,
    block=(32, 32),
    *,
    where: Callable[[str, nnx.Module], bool] | None = None,
    impl: str = "auto",
    interpret: bool = False,
    max_density: float = 1.0,
    stacked: Callable[[str, nnx.Module], bool] | None = None,
) -> nnx.Module:
    """A copy of `model` whose `nnx.Linear` / `nnx.Conv` modules run block-sparse.

    Each selected layer is swapped (``nnx.recursive_map``) for a `BlockSparseLinear` /
    `BlockSparseConv` holding ``BlockSparse.from_dense(layer.kernel)``; outputs equal the model's
    on the same (decoded) weights. `model` itself is left unchanged.

    Args:
      model: an NNX module with concrete weights.
      block: b or (b_in, b_out).
      where: ``(path, layer) -> bool`` choosing layers ('/'-joined attribute path, e.g.
        'layers/0'); default: every Linear and Conv.
      impl, interpret: passed to `lscjax.sparse.matmul` by the swapped layers.
      max_density: a selected layer whose kernel has a larger fraction of non-zero blocks
        (`BlockSparse.block_density`) is not swapped (see `lscjax.flax.to_block_sparse`).
      stacked: ``(path, layer) -> bool`` choosing the selected layers that hold L layers
        stacked on a leading axis (made by ``nnx.vmap``, run by ``nnx.scan``): each layer's
        kernel is converted and the L BlockSparse stacked (`lscjax.sparse.stack`), so the
        swapped module slices back per layer under the scan; default: none.

    Returns:
      The swapped model (a new module graph).

    Raises:
      LscError: bad `impl` or `max_density`, a kernel that is not float or has NaN/Inf, a
        grouped or masked Conv, a kernel whose rank does not fit the layer (a stack of layers
        not chosen by `stacked`; the message names the layer path).
    """
    if impl not in IMPLS:
        raise LscError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_max_density(max_density)

    def swap(parts, node):
        if type(node) not in (nnx.Linear, nnx.Conv):
            return node
        path = "/".join(str(p) for p in parts)
        if where is not None and not where(path, node):
            return node
        weight = node.kernel[...]
        layers = stacked is not None and stacked(path, node)
        rank = (2 if type(node) is nnx.Linear else len(node.kernel_size) + 2) + layers
        if weight.ndim != rank:
            raise LscError(
                f"layer {path!r}: kernel of shape {weight.shape} does not have the rank "
                f"{rank} of {'a stack of ' if layers else 'one '}{type(node).__name__} kernel"
                f"{'s' if layers else ''} (layers stacked by nnx.vmap need stacked=)"
            )
        kernel = block_sparse_leaf(path + "/kernel", weight, block, stacked=layers)
        if kernel.block_density > max_density:
            return node
        cls = BlockSparseLinear if type(node) is nnx.Linear else BlockSparseConv
        return cls(node, kernel, path=path, impl=impl, interpret=interpret)

    return nnx.recursive_map(swap, nnx.clone(model))
