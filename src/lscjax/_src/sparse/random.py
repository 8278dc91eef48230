"""Random block-sparse kernels of a given block density (tests and benchmarks)."""

import numpy as np

from lscjax._src.coding.layout import block_grid
from lscjax._src.errors import LscError
from lscjax._src.sparse.block_sparse import as_block, matrix_shape


def random_block_kernel(
    rng: np.random.Generator,
    shape: tuple,
    block,
    density: float,
    *,
    balanced: bool = False,
    dtype=np.float32,
) -> np.ndarray:
    """A dense kernel whose non-zeros fill a random fraction `density` of its blocks.

    Args:
      rng: NumPy generator.
      shape: kernel shape, Dense [in, out] or Conv [*window, in, out].
      block: b or (b_in, b_out), blocks of the kernel's matrix view (as in BlockSparse).
      density: fraction of non-zero blocks in [0, 1]: exactly ``round(density * R * C)`` blocks
        at uniformly random positions, or with `balanced`, ``round(density * C)`` in every
        output block row.
      balanced: equal non-zero blocks per output block row (no ELL padding).
      dtype: NumPy dtype of the result.

    Returns:
      `dtype` array of `shape`: standard normal values in the chosen blocks, zeros elsewhere.
    """
    if not 0.0 <= density <= 1.0:
        raise LscError(f"density must be in [0, 1], got {density!r}")
    block = as_block(block)
    cols, rows = block_grid(shape, block)  # (in, out)
    if balanced:
        ranks = np.argsort(np.argsort(rng.random((rows, cols)), axis=1), axis=1)
        mask = ranks < round(density * cols)
    else:
        mask = np.zeros(rows * cols, bool)
        mask[rng.permutation(rows * cols)[: round(density * rows * cols)]] = True
        mask = mask.reshape(rows, cols)
    k, n = matrix_shape(shape)
    bi, bo = block
    dense_mask = np.repeat(np.repeat(mask.T, bi, axis=0), bo, axis=1)[:k, :n]
    m = np.where(dense_mask, rng.standard_normal((k, n)), 0.0).astype(dtype)
    return m.reshape(shape)
