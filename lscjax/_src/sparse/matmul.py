"""``x @ W`` for a `BlockSparse` W: one `impl=` argument dispatching to XLA or a Pallas kernel.

The product is a `jax.custom_vjp`, so `jax.grad` works with respect to x, to float block values and
to the codebook of coded blocks, whichever path ran forward (Pallas kernels have no autodiff
rule of their own); the backward pass is the lax reference's.
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lscjax._src.errors import LscError
from lscjax._src.kernels import pallas_gpu, pallas_tpu, reference
from lscjax._src.sparse import plan
from lscjax._src.sparse.block_sparse import BlockSparse, Overflow
from lscjax._src.sparse.shard import ShardedBlockSparse, sharded_matmul

IMPLS = ("auto", "xla", "pallas", "pallas_gpu", "pallas_tpu")


class _Config(NamedTuple):
    """Static facts of one product: the BlockSparse's static fields and the chosen path."""

    shape: tuple
    block: tuple
    bits: int | None
    kernel: str  # "xla" | "pallas_gpu" | "pallas_tpu"
    interpret: bool
    row_groups: tuple | None


def _is_pow2_tile(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _fits(kernel: str, w: BlockSparse) -> bool:
    """Whether `kernel` compiles for `w`'s tiles on real hardware (interpret mode has no limits)."""
    b_in = w.block[0] // 2 if w.bits == 4 else w.block[0]
    if kernel == "pallas_gpu":
        return _is_pow2_tile(b_in) and _is_pow2_tile(w.block[1])
    return b_in % 128 == 0 and w.block[1] % 128 == 0


def resolve_impl(impl: str, w: BlockSparse, interpret: bool = False) -> str:
    """The path `matmul` takes: "xla", "pallas_gpu" or "pallas_tpu".

    "auto" picks the Pallas kernel of the default backend when `w`'s tiles fit it, else XLA (the
    CPU path). "pallas" picks the backend's kernel (on CPU, the GPU kernel in interpret mode).

    Raises:
      LscError: unknown `impl`, or a Pallas kernel requested on CPU without ``interpret=True``.
    """
    if impl not in IMPLS:
        raise LscError(f"impl must be one of {IMPLS}, got {impl!r}")
    backend = jax.default_backend()
    native = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}
    if impl == "auto":
        kernel = native.get(backend)
        return kernel if kernel is not None and _fits(kernel, w) else "xla"
    if impl == "pallas":
        impl = native.get(backend, "pallas_gpu")
    if impl != "xla" and not interpret and native.get(backend) != impl:
        raise LscError(f"impl={impl!r} needs its device (backend is {backend!r}) or interpret=True")
    return impl


def _layout(blocks, codebook, indices, counts, overflow, cfg: _Config) -> BlockSparse:
    return BlockSparse(
        blocks,
        indices,
        counts,
        codebook,
        cfg.shape,
        cfg.block,
        cfg.bits,
        row_groups=cfg.row_groups,
        overflow=overflow,
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


# Rows of x up to which float values are multiplied in place (one Kmax-padded group in stored
# order) rather than in the sorted row groups. Reordering float rows copies every block, which
# at few rows of x costs more than multiplying the padding; the padding's FLOPs grow with the
# rows. 4096^2, 10% random blocks, f32 / dense, in place against 8 sorted groups
# (`benchmarks/matmul_plans.py`, two runs): batch 16 b=32 0.19-0.21 vs 0.23-0.25, b=64 0.16 vs
# 0.20-0.23; batch 64 b=32 0.43 vs 0.34-0.38, b=64 0.24-0.25 vs 0.22. An exploratory sweep of
# 16-64 rows (one run) agreed for b=32 (in place ahead up to 32 rows, groups from 48) but had
# groups ahead for b=64 at every row count (0.20 vs 0.23 at 16 rows): noise of that size.
FLOAT_IN_PLACE_MAX_ROWS = 32


def _plan(w: BlockSparse, m: int) -> tuple[int, ...]:
    """The row groups `_xla` multiplies for an x of m rows: `w.groups()`, except for float
    values and m <= FLOAT_IN_PLACE_MAX_ROWS, one group of length Kmax in stored order."""
    if w.bits is None and m <= FLOAT_IN_PLACE_MAX_ROWS:
        return (w.kmax,)
    return w.groups()


def _xla(x, w: BlockSparse, groups: tuple[int, ...]):
    """XLA path: each row group of `groups` gathered, dequantized and multiplied on its own.

    Groups padded to their own longest row are taken in descending-count order (an in-jit stable
    argsort of the counts, as when the plan was made) and the output block rows are put back in
    order by a gather; groups all of length Kmax keep the stored order (plain slices). The
    overflow rows are one more product, spread onto their output blocks.
    """
    rows, kmax = w.indices.shape
    size = plan.rows_per_group(rows, groups)
    order = jnp.argsort(-w.counts, stable=True) if min(groups) < kmax else None
    parts = []
    for g, k in enumerate(groups):
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
        parts.append(reference.block_matmul(x, part.block_values(), part.indices))
    y = jnp.concatenate(parts, axis=1)  # [M, R * b_out], rows in group order
    if order is not None:
        m, b_out = x.shape[0], w.block[1]
        y = y.reshape(m, rows, b_out)[:, jnp.argsort(order)].reshape(m, rows * b_out)
    if w.overflow is not None:
        ov = w.overflow_part()
        y += _spread(
            reference.block_matmul(x, ov.block_values(), ov.indices), w.overflow.rows, rows
        )
    return y


def _row_pieces(a, gathered_row_bytes: int):
    """a [M, F] as zero-padded pieces [n, piece, F] whose gathered x fits TEMP_BYTES, or None.

    The gathered x is [slots, M, b_in], hundreds of MB at large M (conv patches, big batches);
    ``gathered_row_bytes`` is its size per row of x. Arrays of the same M and row bytes are cut
    alike. None when all M rows fit in one piece.
    """
    m = a.shape[0]
    piece = max(1, plan.TEMP_BYTES // gathered_row_bytes)
    if m <= piece:
        return None
    n = -(-m // piece)
    piece = -(-m // n)  # n pieces of equal rows, the last zero-padded
    return jnp.pad(a, ((0, n * piece - m), (0, 0))).reshape(n, piece, a.shape[1])


def _xla_in_row_pieces(x, w: BlockSparse):
    """`_xla` over `_row_pieces` of x, in sequence (lax.map); coded blocks dequantized in each.

    Every piece follows the plan of x's whole row count.
    """
    groups = _plan(w, x.shape[0])
    slots = plan.rows_per_group(w.blocks.shape[0], groups) * sum(groups)
    slots += 0 if w.overflow is None else w.overflow.indices.size
    xs = _row_pieces(x, slots * w.block[0] * x.dtype.itemsize)
    if xs is None:
        return _xla(x, w, groups)
    return lax.map(lambda xp: _xla(xp, w, groups), xs).reshape(-1, w.blocks.shape[0] * w.block[1])[
        : x.shape[0]
    ]


def _vjp_in_row_pieces(x, values, indices, valid, g):
    """`reference.block_matmul_vjp` over `_row_pieces` of x and g, summing the dvalues in f32."""
    rows, kmax, b_in, _ = values.shape
    row_bytes = rows * kmax * b_in * x.dtype.itemsize
    xs, gs = _row_pieces(x, row_bytes), _row_pieces(g, row_bytes)
    if xs is None:
        return reference.block_matmul_vjp(x, values, indices, valid, g)

    def piece(dvalues, xg):
        dx, dv = reference.block_matmul_vjp(xg[0], values, indices, valid, xg[1])
        return dvalues + dv.astype(jnp.float32), dx

    dvalues, dxs = lax.scan(piece, jnp.zeros(values.shape, jnp.float32), (xs, gs))
    return dxs.reshape(-1, x.shape[1])[: x.shape[0]], dvalues.astype(values.dtype)


def _pallas(x, w: BlockSparse, cfg: _Config):
    """The Pallas kernel of `cfg` on w's rows, and on its overflow rows (spread onto theirs)."""
    kernel = pallas_gpu if cfg.kernel == "pallas_gpu" else pallas_tpu

    def product(part: BlockSparse):
        counts = jnp.minimum(part.counts, part.kmax)  # the kernels loop over counts[r] slots
        if part.bits == 4:  # dequantized inside the kernel
            return kernel.block_matmul(
                x, part.blocks, part.indices, counts, part.codebook, interpret=cfg.interpret
            )
        return kernel.block_matmul(
            x, part.block_values(), part.indices, counts, interpret=cfg.interpret
        )

    y = product(w)
    if w.overflow is not None:
        y += _spread(product(w.overflow_part()), w.overflow.rows, w.blocks.shape[0])
    return y


def _forward(x, blocks, codebook, indices, counts, overflow, cfg: _Config):
    w = _layout(blocks, codebook, indices, counts, overflow, cfg)
    return _xla_in_row_pieces(x, w) if cfg.kernel == "xla" else _pallas(x, w, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _product(x, blocks, codebook, indices, counts, overflow, cfg: _Config):
    return _forward(x, blocks, codebook, indices, counts, overflow, cfg)


def _product_fwd(x, blocks, codebook, indices, counts, overflow, cfg):
    y = _forward(x, blocks, codebook, indices, counts, overflow, cfg)
    return y, (x, blocks, codebook, indices, counts, overflow)


def _product_bwd(cfg, residuals, g):
    x, blocks, codebook, indices, counts, overflow = residuals
    w = _layout(blocks, codebook, indices, counts, overflow, cfg)
    parts = [w] if overflow is None else [w, w.overflow_part()]
    gs = [g] if overflow is None else [g, _overflow_rows(g, overflow.rows, blocks.shape[0])]
    if cfg.bits is None:
        values = [part.blocks for part in parts]
    else:
        values, pull = jax.vjp(
            lambda cb: [dataclasses.replace(part, codebook=cb).block_values() for part in parts],
            codebook,
        )
    dx, dvalues = 0, []
    for part, v, gp in zip(parts, values, gs, strict=True):
        dx_part, dv = _vjp_in_row_pieces(x, v, part.indices, part.valid(), gp)
        dx, dvalues = dx + dx_part, dvalues + [dv]
    if cfg.bits is not None:
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


def matmul(x: jax.Array, w: BlockSparse, *, impl: str = "auto", interpret: bool = False):
    """``x @ W`` with W a `BlockSparse` in Flax's (in, out) kernel layout.

    Args:
      x: float [..., K] with any leading batch dims (batch 1 and none included); K is W's input
        size (``w.matrix_shape[0]``; for a Conv kernel, the patch size).
      w: the BlockSparse kernel. Coded blocks are dequantized inside the computation.
      impl: "auto" (Pallas on GPU/TPU when the tiles fit, XLA otherwise), "xla" (gather +
        batched matmul over padded block rows, no scatter), "pallas" (the backend's kernel),
        or "pallas_gpu" / "pallas_tpu" explicitly (CPU: with ``interpret=True``).
      interpret: run a Pallas kernel in interpret mode (CPU tests).

    Returns:
      [..., N] of ``result_type(x.dtype, w.dtype)``, accumulated in float32. Differentiable with
      respect to x, float block values and codebooks (padded slots get zero cotangents).

    Raises:
      LscError: `w` not a BlockSparse, x not floating point or of the wrong last dimension, a bad
        `impl`, or (concrete `w`) counts beyond Kmax without an overflow: a BlockSparse rebuilt
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
        return sharded_matmul(x, w, functools.partial(matmul, impl=impl, interpret=interpret))
    _check_overflow(w)
    kernel = resolve_impl(impl, w, interpret)
    cfg = _Config(tuple(w.shape), tuple(w.block), w.bits, kernel, bool(interpret), w.row_groups)
    cols = -(-k // w.block[0])
    lead = x.shape[:-1]
    if math.prod(lead) == 0 or k == 0 or n == 0:  # empty batch, contraction or output: no blocks
        return jnp.zeros((*lead, n), jnp.result_type(x.dtype, w.dtype))
    x2 = jnp.pad(x.reshape(-1, k), ((0, 0), (0, cols * w.block[0] - k)))
    y = _product(x2, w.blocks, w.codebook, w.indices, w.counts, w.overflow, cfg)
    return y[:, :n].reshape(*lead, n)
