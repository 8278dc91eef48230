"""Block-sparse weights in padded block-row layout, and their matmul / conv (XLA or Pallas)."""

from lscjax._src.sparse.block_sparse import BlockSparse as BlockSparse
from lscjax._src.sparse.conv import conv as conv
from lscjax._src.sparse.embed import lookup as lookup
from lscjax._src.sparse.matmul import matmul as matmul
from lscjax._src.sparse.matmul import resolve_impl as resolve_impl
from lscjax._src.sparse.multi_axis import MultiAxisKernel as MultiAxisKernel
from lscjax._src.sparse.shard import ShardedBlockSparse as ShardedBlockSparse
from lscjax._src.sparse.shard import shard as shard
from lscjax._src.sparse.stack import stack as stack

__all__ = [
    "BlockSparse",
    "MultiAxisKernel",
    "ShardedBlockSparse",
    "conv",
    "lookup",
    "matmul",
    "resolve_impl",
    "shard",
    "stack",
]
