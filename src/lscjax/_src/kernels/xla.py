"""Block-sparse matmul in pure lax: the XLA path (CPU default) and the backward pass of every
kernel.

Shapes used throughout: x [M, C * b_in] (zero-padded input), block values [R, Kmax, b_in, b_out]
(padded slots hold 0), indices int32 [R, Kmax] (input block of each slot), output [M, R * b_out].
"""

import jax
import jax.numpy as jnp
from jax import lax


def gather_x(x: jax.Array, indices: jax.Array, b_in: int) -> jax.Array:
    """x [M, C * b_in] -> the input block of every slot, [R, Kmax, M, b_in].

    x is viewed as [C, M, b_in] before the gather, so each gathered block is one contiguous
    [M, b_in] tile and the slot axes come first, as the batch axes of XLA:CPU's batched dot.
    """
    m = x.shape[0]
    xt = x.reshape(m, -1, b_in).transpose(1, 0, 2)  # [C, M, b_in]
    return xt.at[indices].get(mode="promise_in_bounds")  # BlockSparse indices lie in [0, C)


def block_matmul(x: jax.Array, values: jax.Array, indices: jax.Array, *, form: str) -> jax.Array:
    """``y[:, r] = sum_k x[:, indices[r, k]] @ values[r, k]`` by gather + batched matmul, no scatter.

    Two forms of the same product (the plan chooses by x's row count M,
    `lscjax._src.sparse.plan.Tuning.slot_form_max_rows`):

    * "slot": one [M, b_in] @ [b_in, b_out] product per slot (batch axes R and Kmax), summed
      over the slots of each row; XLA:CPU fuses the sum into the batched dot (one YNNPACK call
      over R * Kmax small products);
    * "row": one [M, Kmax * b_in] @ [Kmax * b_in, b_out] product per row, on the gathered x
      transposed to [R, M, Kmax * b_in].

    Args:
      x: [M, C * b_in], any float dtype.
      values: [R, Kmax, b_in, b_out]; padded slots must hold 0.
      indices: int32 [R, Kmax], each in [0, C).
      form: "slot" or "row".

    Returns:
      [M, R * b_out] of ``result_type(x, values)``, accumulated in float32 (or wider).
    """
    m = x.shape[0]
    rows, kmax, b_in, b_out = values.shape
    out_dtype = jnp.result_type(x.dtype, values.dtype)
    acc = jnp.promote_types(out_dtype, jnp.float32)
    xg = gather_x(x, indices, b_in)  # [R, Kmax, M, b_in]
    if form == "row":
        y = lax.dot_general(
            xg.transpose(0, 2, 1, 3).reshape(rows, m, kmax * b_in),
            values.reshape(rows, kmax * b_in, b_out),
            (((2,), (1,)), ((0,), (0,))),
            preferred_element_type=acc,
        )  # [R, M, b_out]
    else:
        per_slot = lax.dot_general(
            xg, values, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=acc
        )  # [R, Kmax, M, b_out]
        y = per_slot.sum(axis=1)  # [R, M, b_out]
    return y.transpose(1, 0, 2).reshape(m, rows * b_out).astype(out_dtype)


def block_matmul_vjp(x, values, indices, valid, g):
    """Cotangents of `block_matmul` with respect to x and values.

    Args:
      x: [M, C * b_in]; values: [R, Kmax, b_in, b_out]; indices: int32 [R, Kmax].
      valid: bool [R, Kmax], False at padded slots (which receive a zero cotangent, so training
        never makes a padding slot non-zero).
      g: [M, R * b_out], the output cotangent.

    Returns:
      (dx [M, C * b_in] of x.dtype, dvalues [R, Kmax, b_in, b_out] of values.dtype). dx sums the
      per-slot contributions into their input blocks (a segment sum: the one scatter-add, in the
      backward pass only).
    """
    m = x.shape[0]
    rows, kmax, b_in, b_out = values.shape
    cols = x.shape[1] // b_in
    acc = jnp.promote_types(jnp.result_type(x.dtype, values.dtype, g.dtype), jnp.float32)
    gb = g.reshape(m, rows, b_out)
    xg = gather_x(x, indices, b_in)  # [R, Kmax, M, b_in]
    dvalues = jnp.einsum("rkmi,mro->rkio", xg, gb, preferred_element_type=acc)
    dvalues = jnp.where(valid[:, :, None, None], dvalues, 0).astype(values.dtype)
    contrib = jnp.einsum("mro,rkio->rkmi", gb, values, preferred_element_type=acc)
    dx = jax.ops.segment_sum(
        contrib.reshape(rows * kmax, m, b_in), indices.reshape(-1), num_segments=cols
    )  # [C, M, b_in]
    return dx.transpose(1, 0, 2).reshape(m, cols * b_in).astype(x.dtype), dvalues
