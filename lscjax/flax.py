"""Flax integration: run Linen and NNX models from BlockSparse kernels."""

from lscjax._src.flax.linen import compressed_apply as compressed_apply
from lscjax._src.flax.linen import to_block_sparse as to_block_sparse
from lscjax._src.flax.linen import to_dense as to_dense
from lscjax._src.flax.nnx import BlockSparseConv as BlockSparseConv
from lscjax._src.flax.nnx import BlockSparseLinear as BlockSparseLinear
from lscjax._src.flax.nnx import to_block_sparse_nnx as to_block_sparse_nnx

__all__ = [
    "BlockSparseConv",
    "BlockSparseLinear",
    "compressed_apply",
    "to_block_sparse",
    "to_block_sparse_nnx",
    "to_dense",
]
