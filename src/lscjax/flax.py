"""Flax integration: run Linen and NNX models from BlockSparse kernels."""

from lscjax._src.flax.linen import compressed_apply as compressed_apply
from lscjax._src.flax.linen import to_block_sparse as to_block_sparse
from lscjax._src.flax.linen import to_dense as to_dense
from lscjax._src.flax.nnx import BlockSparseConv as BlockSparseConv
from lscjax._src.flax.nnx import BlockSparseLinear as BlockSparseLinear
from lscjax._src.flax.nnx import CodedEmbed as CodedEmbed
from lscjax._src.flax.nnx import to_block_sparse_nnx as to_block_sparse_nnx
from lscjax._src.sparse.leaf import DEFAULT_MAX_DENSITY as DEFAULT_MAX_DENSITY
from lscjax._src.sparse.leaf import format_serving_table as format_serving_table
from lscjax._src.sparse.leaf import serving_table as serving_table

__all__ = [
    "DEFAULT_MAX_DENSITY",
    "BlockSparseConv",
    "BlockSparseLinear",
    "CodedEmbed",
    "compressed_apply",
    "format_serving_table",
    "serving_table",
    "to_block_sparse",
    "to_block_sparse_nnx",
    "to_dense",
]
