"""Block-sparse weights in padded block-row layout, and their matmul / conv (XLA, the compiled CPU
kernel, or Pallas)."""

from lscjax._src.kernels.cpu import available as cpu_kernel_available
from lscjax._src.sparse.block_sparse import BlockSparse as BlockSparse
from lscjax._src.sparse.conv import conv as conv
from lscjax._src.sparse.embed import lookup as lookup
from lscjax._src.sparse.matmul import matmul as matmul
from lscjax._src.sparse.multi_axis import MultiAxisKernel as MultiAxisKernel
from lscjax._src.sparse.plan import Plan as Plan
from lscjax._src.sparse.plan import Tuning as Tuning
from lscjax._src.sparse.plan import explain as explain
from lscjax._src.sparse.plan import plan as plan
from lscjax._src.sparse.plan import resolve_impl as resolve_impl
from lscjax._src.sparse.shard import ShardedBlockSparse as ShardedBlockSparse
from lscjax._src.sparse.shard import shard as shard
from lscjax._src.sparse.stack import stack as stack

__all__ = [
    "BlockSparse",
    "MultiAxisKernel",
    "Plan",
    "ShardedBlockSparse",
    "Tuning",
    "conv",
    "cpu_kernel_available",
    "explain",
    "lookup",
    "matmul",
    "plan",
    "resolve_impl",
    "shard",
    "stack",
]
