"""Dequantizing 4-bit codes inside a Pallas kernel, without a gather (Triton and Mosaic lack one)."""

import jax
import jax.numpy as jnp


def lookup(codes: jax.Array, codebook_ref, n_codes: int, dtype) -> jax.Array:
    """``codebook[codes]`` as a chain of selects over the `n_codes` (<= 16) entries.

    Args:
      codes: integer array (any shape), values in [0, n_codes).
      codebook_ref: a Pallas ref of the float codebook [n_codes] (scalars are read from it).
      n_codes: static number of entries.
      dtype: dtype of the result.

    Returns:
      Array of `codes`' shape and `dtype`.
    """
    codes = codes.astype(jnp.int32)
    out = jnp.zeros(codes.shape, dtype)
    for j in range(n_codes):
        out = jnp.where(codes == j, codebook_ref[j].astype(dtype), out)
    return out
