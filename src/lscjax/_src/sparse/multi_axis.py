"""`MultiAxisKernel`: a kernel with several output axes served from the `BlockSparse` of its
matrix view.

A layer that contracts the first ``in_ndim`` axes of its kernel (``nn.DenseGeneral`` /
``nnx.LinearGeneral`` with ``len(axis) == in_ndim``, an ``nn.Einsum`` that is a matmul) computes
``x[..., K] @ W[K, N]`` with ``K = prod(shape[:in_ndim])`` and ``N = prod(shape[in_ndim:])``.
That [K, N] matrix is the kernel's matrix view; `BlockSparse` cuts its blocks.

`BlockSparse`'s own view of a kernel is ``shape[:-1]`` by ``shape[-1]`` (Dense [in, out], Conv
``[*window, in, out]``, and a DenseGeneral with one output axis, such as the attention output
projection [heads, head_dim, out]): such kernels stay plain BlockSparse. A kernel with several
output axes (the attention query / key / value projections [in, heads, head_dim], ``in_ndim =
1``) has another view, [in, heads * head_dim]: it is held as a MultiAxisKernel whose ``matrix``
is the BlockSparse of shape (K, N), so that conversion (which blocks the [K, N] view) and serving
(which multiplies x reshaped to [..., K]) agree. Masks and codes of such kernels must be made on
the same [K, N] view for their blocks to be the served blocks.
"""

import dataclasses
import math

import jax

from lscjax._src.sparse.block_sparse import BlockSparse


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MultiAxisKernel:
    """A kernel of `shape` whose first `in_ndim` axes are contracted, as its matrix's BlockSparse.

    Attributes:
      matrix: BlockSparse of shape ``(prod(shape[:in_ndim]), prod(shape[in_ndim:]))`` (float
        values or codes); with a leading stack axis for layers stacked by ``nn.scan``.
      shape: static; the logical kernel shape, e.g. (in, heads, head_dim).
      in_ndim: static; how many leading axes of `shape` the layer contracts (>= 1).
    """

    matrix: BlockSparse
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    in_ndim: int = dataclasses.field(metadata=dict(static=True))

    @property
    def dtype(self):
        """The dtype of the weight's values (`BlockSparse.dtype`)."""
        return self.matrix.dtype

    @property
    def ndim(self) -> int:
        """Rank of the logical kernel."""
        return len(self.shape)

    @property
    def block_density(self) -> float:
        """`BlockSparse.block_density` of the matrix (concrete weights only)."""
        return self.matrix.block_density

    @property
    def bits(self) -> int | None:
        """`BlockSparse.bits` of the matrix."""
        return self.matrix.bits

    @property
    def block(self) -> tuple:
        """`BlockSparse.block` of the matrix."""
        return self.matrix.block

    def todense(self) -> jax.Array:
        """The dense kernel of `shape` (decoding, tests)."""
        return self.matrix.todense().reshape(self.shape)


def matrix_split(shape: tuple, in_ndim: int) -> tuple[int, int]:
    """(K, N) of the matrix view of a kernel of `shape` whose first `in_ndim` axes contract."""
    return math.prod(shape[:in_ndim]), math.prod(shape[in_ndim:])


def served_matrix(kernel) -> tuple[BlockSparse, int]:
    """(the BlockSparse that multiplies, in_ndim) of a BlockSparse or MultiAxisKernel."""
    if isinstance(kernel, MultiAxisKernel):
        return kernel.matrix, kernel.in_ndim
    return kernel, kernel.ndim - 1


def is_block_sparse(x) -> bool:
    """True for a served block-sparse kernel: `BlockSparse` or `MultiAxisKernel`."""
    return isinstance(x, BlockSparse | MultiAxisKernel)
