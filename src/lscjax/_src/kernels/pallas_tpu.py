"""Block-sparse matmul as a Pallas TPU kernel (Mosaic) with scalar-prefetched block indices.

`PrefetchScalarGridSpec` puts ``indices`` (flattened, int32 [R * Kmax]) and ``counts`` (int32 [R])
in SMEM before the grid runs, so the BlockSpec index maps can pick the x tile of each slot: grid
(R, M / bm, Kmax), program (r, i, k) multiplies x tile (i, indices[r, k]) by block (r, k) into a
float32 VMEM accumulator, skipping padded slots. Padded slots re-map to the row's last real slot,
so the pipeline sees an unchanged block index and issues no DMA for them.

On a real TPU, Mosaic tiles need b_in (b_in / 2 for 4-bit codes) and b_out to be multiples of 128
and bm a multiple of 8; interpret mode (CPU) has no such limit.
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lscjax._src.kernels.codes import lookup
from lscjax._src.kernels.operands import prepare_operands


def row_tile(m: int) -> int:
    """Rows of x per program: m rounded up to a multiple of 8, at most 256."""
    return min(256, -(-m // 8) * 8)


def block_matmul(x, blocks, indices, counts, codebook=None, *, block_m=None, interpret=False):
    """``y[:, r] = sum_{k < counts[r]} x[:, indices[r, k]] @ W_blocks[r, k]`` on TPU.

    Args:
      x: [M, C * b_in] float.
      blocks: float values [R, Kmax, b_in, b_out], or (with `codebook`) 4-bit codes packed as
        uint8 [R, Kmax, b_in // 2, b_out] (low nibble: block row i, high nibble: i + b_in // 2).
      indices: int32 [R, Kmax]; counts: int32 [R].
      codebook: float [n_codes <= 16] for 4-bit codes (read from SMEM), else None.
      block_m: rows of x per program (default `row_tile(M)`).
      interpret: run in Pallas TPU interpret mode (CPU).

    Returns:
      [M, R * b_out] of ``result_type(x, values)``, accumulated in float32.
    """
    op = prepare_operands(x, blocks, codebook, block_m or row_tile(x.shape[0]))
    x, m, bm, padded_m, dtype = op.x, op.m, op.bm, op.padded_m, op.dtype
    rows, kmax, b_in, b_half, b_out = op.rows, op.kmax, op.b_in, op.b_half, op.b_out
    coded, n_codes = op.coded, op.n_codes

    def slot(r, k, counts_ref):
        return jnp.minimum(k, jnp.maximum(counts_ref[r] - 1, 0))

    def x_map(r, i, k, indices_ref, counts_ref):
        return i, indices_ref[r * kmax + slot(r, k, counts_ref)]

    def blocks_map(r, i, k, indices_ref, counts_ref):
        return r, slot(r, k, counts_ref), 0, 0

    def kernel(indices_ref, counts_ref, x_ref, blocks_ref, *refs):
        *codebook_ref, out_ref, acc_ref = refs
        r, k = pl.program_id(0), pl.program_id(2)

        @pl.when(k == 0)
        def _():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(k < counts_ref[r])
        def _():
            if coded:
                packed = blocks_ref[...]
                lo = lookup(packed & 15, codebook_ref[0], n_codes, dtype)
                hi = lookup(packed >> 4, codebook_ref[0], n_codes, dtype)
                acc_ref[...] += jnp.dot(
                    x_ref[:, :b_half], lo, preferred_element_type=jnp.float32
                ) + jnp.dot(x_ref[:, b_half:], hi, preferred_element_type=jnp.float32)
            else:
                acc_ref[...] += jnp.dot(
                    x_ref[...], blocks_ref[...], preferred_element_type=jnp.float32
                )

        @pl.when(k == kmax - 1)
        def _():
            out_ref[...] = acc_ref[...].astype(out_ref.dtype)

    in_specs = [
        pl.BlockSpec((bm, b_in), x_map),
        pl.BlockSpec((None, None, b_half, b_out), blocks_map),
    ]
    operands = [x, blocks]
    if coded:
        in_specs.append(pl.BlockSpec(memory_space=pltpu.SMEM))
        operands.append(codebook)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(rows, padded_m // bm, kmax),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, b_out), lambda r, i, k, *_: (i, r)),
        scratch_shapes=[pltpu.VMEM((bm, b_out), jnp.float32)],
    )
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((padded_m, rows * b_out), dtype),
        grid_spec=grid_spec,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="lscjax_block_sparse_matmul_tpu",
    )(indices.reshape(-1), counts, *operands)
    return y[:m]
