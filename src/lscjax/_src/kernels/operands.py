"""The operand facts both Pallas kernels derive from their inputs (tiles, dtype, padded x)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Operands(NamedTuple):
    """Static facts and the row-padded x of one block-sparse product.

    Attributes:
      x: [padded_m, C * b_in] of `dtype`, x's rows zero-padded to a multiple of `bm`.
      m: rows of the original x; bm: rows per program; padded_m: rows of `x`.
      rows, kmax: R and Kmax of the blocks; b_in, b_out: the block; b_half: rows of a stored
        block (b_in, or b_in / 2 for packed 4-bit codes).
      coded: 4-bit codes with a codebook; n_codes: codebook entries (0 for float values).
      dtype: result and compute dtype, ``result_type(x, values)``.
    """

    x: jax.Array
    m: int
    bm: int
    padded_m: int
    rows: int
    kmax: int
    b_in: int
    b_half: int
    b_out: int
    coded: bool
    n_codes: int
    dtype: jnp.dtype


def prepare_operands(x, blocks, codebook, bm: int) -> Operands:
    """Derive `Operands` from x [M, C * b_in], blocks [R, Kmax, b_half, b_out], codebook or None."""
    m = x.shape[0]
    rows, kmax, b_half, b_out = blocks.shape
    coded = codebook is not None
    dtype = jnp.result_type(x.dtype, (codebook if coded else blocks).dtype)
    padded_m = -(-m // bm) * bm
    x = jnp.pad(x.astype(dtype), ((0, padded_m - m), (0, 0)))
    return Operands(
        x=x,
        m=m,
        bm=bm,
        padded_m=padded_m,
        rows=rows,
        kmax=kmax,
        b_in=2 * b_half if coded else b_half,
        b_half=b_half,
        b_out=b_out,
        coded=coded,
        n_codes=codebook.shape[0] if coded else 0,
        dtype=dtype,
    )
