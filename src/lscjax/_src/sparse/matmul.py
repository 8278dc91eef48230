"""``x @ W`` for a `BlockSparse` W: one `impl=` argument dispatching to XLA or a Pallas kernel.

The product is a `jax.custom_vjp`, so `jax.grad` works with respect to x, to float block values and
to the codebook of coded blocks, whichever path ran forward (Pallas kernels have no autodiff
rule of their own); the backward pass is the XLA path's
(`lscjax._src.kernels.xla.block_matmul_vjp`).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lscjax._src.errors import LscError
from lscjax._src.kernels import cpu, pallas_gpu, pallas_tpu, xla
from lscjax._src.sparse.block_sparse import BlockSparse, Overflow
from lscjax._src.sparse.plan import Plan, Tuning, plan, rows_per_group
from lscjax._src.sparse.shard import ShardedBlockSparse, sharded_matmul


def _layout(blocks, codebook, indices, counts, overflow, p: Plan) -> BlockSparse:
    return BlockSparse(
        blocks, indices, counts, codebook, p.shape, p.block, p.bits, overflow=overflow
    )


def _spread(y, rows, n_rows: int):
    """The overflow rows' output y [M, R2 * b_out] (rows int32 [R2], ascending) as the output of
    all n_rows block rows [M, n_rows * b_out], zero where a row has no overflow: a gather."""
    m, r2 = y.shape[0], rows.shape[0]
    every = jnp.arange(n_rows)
    at = jnp.minimum(jnp.searchsorted(rows, every), r2 - 1)
    spread = y.reshape(m, r2, -1)[:, at]  # [M, n_rows, b_out]
    return jnp.where((rows[at] == every)[None, :, None], spread, 0).reshape(m, -1)


def _overflow_rows(g, rows, n_rows: int):
    """The inverse view of `_spread`: the overflow rows' blocks of g [M, n_rows * b_out]."""
    m = g.shape[0]
    return g.reshape(m, n_rows, -1)[:, rows].reshape(m, -1)


def _xla(x, w: BlockSparse, p: Plan):
    """XLA path: each row group of ``p.groups`` gathered, dequantized and multiplied on its own.

    Groups padded to their own longest row are taken in descending-count order (an in-jit stable
    argsort of the counts, as when the plan was made) and the output block rows are put back in
    order by a gather; groups all of length Kmax keep the stored order (plain slices). The
    overflow rows are one more product, spread onto their output blocks.
    """
    rows = w.indices.shape[0]
    size = rows_per_group(rows, p.groups)
    order = jnp.argsort(-w.counts, stable=True) if p.sorted_rows else None
    parts = []
    for g, k in enumerate(p.groups):
        sel = slice(g * size, (g + 1) * size)
        take = sel if order is None else order[sel]
        part = BlockSparse(
            w.blocks[take, :k],
            w.indices[take, :k],
            w.counts[take],
            w.codebook,
            w.shape,
            w.block,
            w.bits,
        )
        parts.append(xla.block_matmul(x, part.block_values(), part.indices, form=p.form))
    y = jnp.concatenate(parts, axis=1)  # [M, R * b_out], rows in group order
    if order is not None:
        m, b_out = x.shape[0], w.block[1]
        y = y.reshape(m, rows, b_out)[:, jnp.argsort(order)].reshape(m, rows * b_out)
    if w.overflow is not None:
        ov = w.overflow_part()
        y += _spread(
            xla.block_matmul(x, ov.block_values(), ov.indices, form=p.form),
            w.overflow.rows,
            rows,
        )
    return y


def _row_pieces(a, pieces: int):
    """a [M, F] as `pieces` zero-padded pieces [pieces, ceil(M / pieces), F] (`plan.row_pieces`
    decides how many: the gathered x of each fits the tuning's temp_bytes)."""
    m = a.shape[0]
    piece = -(-m // pieces)  # the last piece zero-padded
    return jnp.pad(a, ((0, pieces * piece - m), (0, 0))).reshape(pieces, piece, a.shape[1])


def _xla_in_row_pieces(x, w: BlockSparse, p: Plan):
    """`_xla` over ``p.pieces`` pieces of x's rows, in sequence (lax.map); coded blocks
    dequantized in each. Every piece follows the plan of x's whole row count."""
    if p.pieces == 1:
        return _xla(x, w, p)
    ys = lax.map(lambda xp: _xla(xp, w, p), _row_pieces(x, p.pieces))
    return ys.reshape(-1, w.blocks.shape[0] * w.block[1])[: x.shape[0]]


def _vjp_in_row_pieces(x, values, indices, valid, g, pieces: int):
    """`xla.block_matmul_vjp` over `pieces` pieces of x's and g's rows, summing the
    dvalues in f32."""
    if pieces == 1:
        return xla.block_matmul_vjp(x, values, indices, valid, g)

    def piece(dvalues, xg):
        dx, dv = xla.block_matmul_vjp(xg[0], values, indices, valid, xg[1])
        return dvalues + dv.astype(jnp.float32), dx

    xs, gs = _row_pieces(x, pieces), _row_pieces(g, pieces)
    dvalues, dxs = lax.scan(piece, jnp.zeros(values.shape, jnp.float32), (xs, gs))
    return dxs.reshape(-1, x.shape[1])[: x.shape[0]], dvalues.astype(values.dtype)


def _kernel(x, w: BlockSparse, p: Plan):
    """The kernel of `p` (CPU or Pallas) on w's rows, and on its overflow rows (spread onto
    theirs)."""
    kernel = pallas_gpu if p.kernel == "pallas_gpu" else pallas_tpu

    def product(part: BlockSparse):
        counts = jnp.minimum(part.counts, part.kmax)  # the kernels loop over counts[r] slots
        if p.kernel == "cpu":  # coded blocks dequantized here, once per call
            return cpu.block_matmul(x, part.block_values(), part.indices, counts)
        if part.bits == 4:  # dequantized inside the kernel
            return kernel.block_matmul(
                x, part.blocks, part.indices, counts, part.codebook, interpret=p.interpret
            )
        return kernel.block_matmul(
            x, part.block_values(), part.indices, counts, interpret=p.interpret
        )

    y = product(w)
    if w.overflow is not None:
        y += _spread(product(w.overflow_part()), w.overflow.rows, w.blocks.shape[0])
    return y


def _forward(x, blocks, codebook, indices, counts, overflow, p: Plan):
    w = _layout(blocks, codebook, indices, counts, overflow, p)
    return _xla_in_row_pieces(x, w, p) if p.kernel == "xla" else _kernel(x, w, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _product(x, blocks, codebook, indices, counts, overflow, p: Plan):
    return _forward(x, blocks, codebook, indices, counts, overflow, p)


def _product_fwd(x, blocks, codebook, indices, counts, overflow, p):
    y = _forward(x, blocks, codebook, indices, counts, overflow, p)
    return y, (x, blocks, codebook, indices, counts, overflow)


def _product_bwd(p, residuals, g):
    x, blocks, codebook, indices, counts, overflow = residuals
    w = _layout(blocks, codebook, indices, counts, overflow, p)
    parts = [w] if overflow is None else [w, w.overflow_part()]
    gs = [g] if overflow is None else [g, _overflow_rows(g, overflow.rows, blocks.shape[0])]
    if p.bits is None:
        values = [part.blocks for part in parts]
    else:
        values, pull = jax.vjp(
            lambda cb: [dataclasses.replace(part, codebook=cb).block_values() for part in parts],
            codebook,
        )
    dx, dvalues = 0, []
    for part, v, gp, pieces in zip(parts, values, gs, p.grad_pieces, strict=True):
        dx_part, dv = _vjp_in_row_pieces(x, v, part.indices, part.valid(), gp, pieces)
        dx, dvalues = dx + dx_part, dvalues + [dv]
    if p.bits is not None:
        return dx, None, pull(dvalues)[0], None, None, None
    d_overflow = None if overflow is None else Overflow(dvalues[1], None, None)
    return dx, dvalues[0], None, None, None, d_overflow


_product.defvjp(_product_fwd, _product_bwd)


def _check_overflow(w: BlockSparse) -> None:
    """Raise if concrete counts run past Kmax with no overflow to hold the rest of those rows."""
    if w.overflow is None and not isinstance(w.counts, jax.core.Tracer):
        longest = int(np.asarray(w.counts).max(initial=0))
        if longest > w.kmax:
            raise LscError(
                f"matmul: a row has {longest} blocks but Kmax is {w.kmax} and there is no "
                "overflow; was the BlockSparse rebuilt without its `overflow` field? "
                "(dataclasses.replace keeps it)"
            )


def matmul(
    x: jax.Array,
    w: BlockSparse,
    *,
    impl: str = "auto",
    interpret: bool = False,
    tuning: Tuning | None = None,
):
    """``x @ W`` with W a `BlockSparse` in Flax's (in, out) kernel layout.

    Args:
      x: float [..., K] with any leading batch dims (batch 1 and none included); K is W's input
        size (``w.matrix_shape[0]``; for a Conv kernel, the patch size).
      w: the BlockSparse kernel. Coded blocks are dequantized inside the computation.
      impl: "auto" (Pallas on GPU/TPU when the tiles fit; on the CPU the compiled kernel for
        float32 x and values with output blocks of 16, 32 or 64; XLA otherwise), "xla" (gather
        + batched matmul over padded block rows, no scatter), "cpu" (the compiled CPU kernel,
        `lscjax.sparse.cpu_kernel_available`), "pallas" (the backend's kernel), or "pallas_gpu"
        / "pallas_tpu" explicitly (CPU: with ``interpret=True``).
      interpret: run a Pallas kernel in interpret mode (CPU tests).
      tuning: the thresholds of the call's choices (`lscjax.sparse.Tuning`; default measured
        on XLA:CPU); `lscjax.sparse.explain` prints the path the call takes.

    Returns:
      [..., N] of ``result_type(x.dtype, w.dtype)``, accumulated in float32. Differentiable with
      respect to x, float block values and codebooks (padded slots get zero cotangents).

    Raises:
      LscError: `w` not a BlockSparse, x not floating point or of the wrong last dimension, a bad
        `impl` or `tuning`, or (concrete `w`) counts beyond Kmax without an overflow: a BlockSparse rebuilt
        from another's fields without its ``overflow`` (use ``dataclasses.replace``).

    Example:
      >>> w = lscjax.sparse.BlockSparse.from_dense(kernel, block=(32, 32))
      >>> x = jnp.ones((8, kernel.shape[0]), jnp.float32)
      >>> y = jax.jit(lscjax.sparse.matmul)(x, w)  # == x @ kernel
    """
    if not isinstance(w, BlockSparse):
        raise LscError(f"matmul: expected a BlockSparse weight, got {type(w).__name__}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LscError(f"matmul: x must be floating point, got dtype {x.dtype}")
    k, n = w.matrix_shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise LscError(f"matmul: x of shape {x.shape} does not match W of input size {k}")
    if isinstance(w, ShardedBlockSparse):
        return sharded_matmul(
            x, w, functools.partial(matmul, impl=impl, interpret=interpret, tuning=tuning)
        )
    _check_overflow(w)
    p = plan(x.shape, w, x_dtype=x.dtype, impl=impl, interpret=interpret, tuning=tuning)
    cols = -(-k // w.block[0])
    lead = x.shape[:-1]
    if math.prod(lead) == 0 or k == 0 or n == 0:  # empty batch, contraction or output: no blocks
        return jnp.zeros((*lead, n), jnp.result_type(x.dtype, w.dtype))
    x2 = jnp.pad(x.reshape(-1, k), ((0, 0), (0, cols * w.block[0] - k)))
    y = _product(x2, w.blocks, w.codebook, w.indices, w.counts, w.overflow, p)
    return y[:, :n].reshape(*lead, n)
