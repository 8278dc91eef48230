"""Block-sparse matmul as a Pallas GPU kernel (Triton lowering), block indices read in-kernel.

Lowering: Pallas' Triton backend. GPU Pallas backends have no scalar prefetch, so the kernel reads
``counts[r]`` and ``indices[r, k]`` from global memory itself and loops ``fori_loop(0, counts[r])``
over the row's non-zero blocks: padded slots cost nothing. Triton is chosen over Mosaic GPU
because it runs on every CUDA GPU JAX supports (Mosaic GPU targets Hopper and needs explicit
warpgroup/TMA programming for a data-dependent gather), and because ``pl.pallas_call`` with Triton
lowering exists unchanged in JAX 0.10.x, 0.11.x and 0.12.0 (deprecated since 0.11 in favour of
Mosaic GPU, with a DeprecationWarning at lowering; tests/test_kernels_lowering.py lowers this
kernel for an H100 under 0.10.2, 0.11.2 and 0.12.0.1).

Grid: (R, M / bm). Program (r, i) computes the output tile rows ``i * bm : (i + 1) * bm``,
columns of output block row r, accumulating in float32. Inputs are whole-array refs (pointers in
Triton); tiles are loaded with dynamic slices. Triton needs power-of-two tile sides of at least
16 for ``dot``: b_in (b_in / 2 for 4-bit codes), b_out and bm.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lscjax._src.kernels.codes import lookup
from lscjax._src.kernels.operands import prepare_operands

try:  # Triton compiler parameters: present in JAX 0.10.x to 0.12.x.
    from jax.experimental.pallas import triton as pl_triton

    _COMPILER_PARAMS = pl_triton.CompilerParams(num_warps=4, num_stages=2)
except ImportError:  # pragma: no cover - a JAX without the Triton module uses its defaults
    _COMPILER_PARAMS = None


def row_tile(m: int) -> int:
    """Rows of x per program: the next power of two >= m, clamped to [16, 64]."""
    return min(64, max(16, 1 << max(0, (m - 1).bit_length())))


def _whole(a):
    return pl.BlockSpec(a.shape, lambda *_: (0,) * a.ndim)


def block_matmul(x, blocks, indices, counts, codebook=None, *, block_m=None, interpret=False):
    """``y[:, r] = sum_{k < counts[r]} x[:, indices[r, k]] @ W_blocks[r, k]`` on GPU.

    Args:
      x: [M, C * b_in] float.
      blocks: float values [R, Kmax, b_in, b_out], or (with `codebook`) 4-bit codes packed as
        uint8 [R, Kmax, b_in // 2, b_out] (low nibble: block row i, high nibble: i + b_in // 2).
      indices: int32 [R, Kmax]; counts: int32 [R].
      codebook: float [n_codes <= 16] for 4-bit codes, else None.
      block_m: rows of x per program (default `row_tile(M)`).
      interpret: run in Pallas interpret mode (CPU).

    Returns:
      [M, R * b_out] of ``result_type(x, values)``, accumulated in float32.
    """
    op = prepare_operands(x, blocks, codebook, block_m or row_tile(x.shape[0]))
    x, m, bm, padded_m, dtype = op.x, op.m, op.bm, op.padded_m, op.dtype
    rows, b_in, b_half, b_out = op.rows, op.b_in, op.b_half, op.b_out
    coded, n_codes = op.coded, op.n_codes

    def kernel(x_ref, blocks_ref, indices_ref, counts_ref, *refs):
        *codebook_ref, out_ref = refs
        r, i = pl.program_id(0), pl.program_id(1)
        tile_rows = pl.ds(pl.multiple_of(i * bm, bm), bm)

        def body(k, acc):
            start = pl.multiple_of(indices_ref[r, k] * b_in, b_in)
            if coded:
                packed = blocks_ref[r, k]  # [b_in // 2, b_out]
                lo = lookup(packed & 15, codebook_ref[0], n_codes, dtype)
                hi = lookup(packed >> 4, codebook_ref[0], n_codes, dtype)
                x_lo = x_ref[tile_rows, pl.ds(start, b_half)]
                x_hi = x_ref[tile_rows, pl.ds(start + b_half, b_half)]
                acc += jnp.dot(x_lo, lo, preferred_element_type=jnp.float32)
                return acc + jnp.dot(x_hi, hi, preferred_element_type=jnp.float32)
            x_tile = x_ref[tile_rows, pl.ds(start, b_in)]
            return acc + jnp.dot(x_tile, blocks_ref[r, k], preferred_element_type=jnp.float32)

        acc = lax.fori_loop(0, counts_ref[r], body, jnp.zeros((bm, b_out), jnp.float32))
        out_ref[...] = acc.astype(out_ref.dtype)

    operands = [x, blocks, indices, counts] + ([codebook] if coded else [])
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((padded_m, rows * b_out), dtype),
        grid=(rows, padded_m // bm),
        in_specs=[_whole(a) for a in operands],
        out_specs=pl.BlockSpec((bm, b_out), lambda r, i: (i, r)),
        compiler_params=_COMPILER_PARAMS,
        interpret=interpret,
        name="lscjax_block_sparse_matmul_gpu",
    )(*operands)
    return y[:m]
