"""Building a `BlockSparse`: the constructors from dense kernels, codes, QArrays and LSC
encodings (the `BlockSparse.from_*` class methods), the overflow split and the dense view.

Every constructor gathers the non-zero blocks into the padded block-row layout
(`ell_from_coords`), splits a float layout's longest rows into an `Overflow` where
`lscjax._src.sparse.plan.overflow_width` says so, and records the `row_groups` plan.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.coding.codec import decode_qarray
from lscjax._src.coding.layout import block_grid
from lscjax._src.coding.lsc import decode_blocks
from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray, check_qarray
from lscjax._src.sparse.block_sparse import (
    CODE_BITS,
    BlockSparse,
    Overflow,
    as_block,
    pack_nibbles,
    to_matrix,
)
from lscjax._src.sparse.plan import Tuning, overflow_width, row_groups, slot_bytes
from lscjax._src.sparse.stack import merged


def _blocked(m: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Matrix [K, N] -> zero-padded blocks [R, C, b_in, b_out] (block (c, r) at [r, c])."""
    bi, bo = block
    k, n = m.shape
    cols, rows = -(-k // bi), -(-n // bo)
    padded = np.zeros((cols * bi, rows * bo), m.dtype)
    padded[:k, :n] = m
    return padded.reshape(cols, bi, rows, bo).transpose(2, 0, 1, 3)


def ell_from_coords(out_rows, in_cols, tiles, n_rows: int):
    """Padded block-row layout of the non-zero blocks given by their grid coordinates.

    Args:
      out_rows: int [nb], output block row of each block; in_cols: int [nb], input block column.
      tiles: [nb, ...], the blocks (any dtype and block shape).
      n_rows: R, the number of output block rows.

    Returns:
      (blocks [R, Kmax, ...] of tiles.dtype with zero padded slots, indices int32 [R, Kmax],
      counts int32 [R]) with ``Kmax = max(1, max(counts))``; each row's blocks in ascending
      input block order. Padded slots repeat the row's last index (0 for empty rows), so kernels
      re-read a block already fetched.
    """
    order = np.lexsort((in_cols, out_rows))
    out_rows, in_cols, tiles = out_rows[order], in_cols[order], tiles[order]
    counts = np.bincount(out_rows, minlength=n_rows).astype(np.int32)
    kmax = max(1, int(counts.max(initial=0)))
    slot = np.arange(out_rows.size) - (np.cumsum(counts) - counts)[out_rows]
    blocks = np.zeros((n_rows, kmax, *tiles.shape[1:]), tiles.dtype)
    blocks[out_rows, slot] = tiles
    indices = np.zeros((n_rows, kmax), np.int32)
    indices[out_rows, slot] = in_cols
    last = indices[np.arange(n_rows), np.maximum(counts - 1, 0)]
    indices = np.where(np.arange(kmax)[None, :] < counts[:, None], indices, last[:, None])
    return blocks, indices.astype(np.int32), counts


def _ell_from_blocked(blocked: np.ndarray, nonzero: np.ndarray):
    """Blocks [R, C, bi, bo] and their non-zero flags bool [R, C] -> `ell_from_coords`."""
    out_rows, in_cols = np.nonzero(nonzero)
    return ell_from_coords(out_rows, in_cols, blocked[out_rows, in_cols], nonzero.shape[0])


def from_dense(w, block=(32, 32), *, tuning: Tuning | None = None) -> BlockSparse:
    """`BlockSparse.from_dense`."""
    block = as_block(block)
    w = _concrete("w", w)
    if not np.issubdtype(w.dtype, np.floating) and w.dtype != jnp.bfloat16:
        raise LscError(f"from_dense: expected a floating-point kernel, got dtype {w.dtype}")
    blocked = _blocked(to_matrix(w), block)
    values, indices, counts = _ell_from_blocked(blocked, (blocked != 0).any(axis=(2, 3)))
    return _planned(
        BlockSparse(jnp.asarray(values), jnp.asarray(indices), counts, None, w.shape, block),
        tuning,
    )


def from_codes(
    codes, codebook, block=(32, 32), *, bits: int | None = None, tuning: Tuning | None = None
) -> BlockSparse:
    """`BlockSparse.from_codes`."""
    block = as_block(block)
    codes = _concrete("codes", codes)
    codebook = jnp.asarray(codebook)
    n_codes = codebook.shape[0] if codebook.ndim == 1 else -1
    if n_codes < 1 or n_codes > 256:
        raise LscError(f"codebook must be 1-D with 1..256 entries, got {codebook.shape}")
    bits = (4 if n_codes <= 16 else 8) if bits is None else bits
    if bits not in CODE_BITS or n_codes > 2**bits:
        raise LscError(f"bits must be 4 or 8 and hold {n_codes} codes, got {bits!r}")
    if bits == 4 and block[0] % 2:
        raise LscError(f"4-bit codes pack pairs of block rows: b_in must be even, got {block}")
    if codes.size and (codes.min() < 0 or codes.max() >= n_codes):
        raise LscError(f"codes must lie in [0, {n_codes}), got [{codes.min()}, {codes.max()}]")
    zero = np.asarray(codebook, np.float32) == 0
    blocked = _blocked(to_matrix(codes.astype(np.uint8)), block)
    # Edge padding is code 0: mark it zero so it never makes a block non-zero.
    nonzero = _blocked(to_matrix(~zero[codes]), block).any(axis=(2, 3))
    coded, indices, counts = _ell_from_blocked(blocked, nonzero)
    if bits == 4:
        coded = pack_nibbles(coded)
    return _planned(
        BlockSparse(
            jnp.asarray(coded), jnp.asarray(indices), counts, codebook, codes.shape, block, bits
        ),
        tuning,
    )


def from_qarray(
    q: QArray, block=(32, 32), *, path: str = "kernel", tuning: Tuning | None = None
) -> BlockSparse:
    """`BlockSparse.from_qarray`."""
    check_qarray(path, q)
    scalar = q.method in ("kmeans", "binarize") and q.codebook.ndim == 1
    if scalar and q.codebook.shape[0] <= 256:
        bits = 4 if q.bits <= 4 and as_block(block)[0] % 2 == 0 else 8
        return from_codes(q.codes, q.codebook, block, bits=bits, tuning=tuning)
    return from_dense(q.dequantize(), block, tuning=tuning)


def from_encoded(encoded, *, tuning: Tuning | None = None) -> BlockSparse:
    """`BlockSparse.from_encoded`."""
    if encoded.format != "lsc":
        raise LscError(f"from_encoded needs an 'lsc' encoding, got {encoded.format!r}")
    if len(encoded.shape) < 2:
        raise LscError(f"from_encoded: expected a kernel of rank >= 2, got {encoded.shape}")
    q = encoded.quantized
    if q is None and not jnp.issubdtype(encoded.dtype, jnp.floating):
        raise LscError(
            f"from_encoded: a plain encoding must hold floats (codes come as a QArray), "
            f"got {encoded.dtype}"
        )
    scalar = q is not None and q.method in ("kmeans", "binarize") and q.codebook.ndim == 1
    if q is not None and not (
        scalar and q.codebook.shape[0] <= 256 and float(q.codebook[0]) == 0.0
    ):
        return from_qarray(decode_qarray(encoded), encoded.options["block"], tuning=tuning)
    b = int(encoded.options["block"])
    in_cols, out_rows, tiles = decode_blocks(encoded)
    rows = block_grid(tuple(encoded.shape), (b, b)).out_blocks
    if q is None:
        blocks, indices, counts = ell_from_coords(out_rows, in_cols, tiles, rows)
        return _planned(
            BlockSparse(
                jnp.asarray(blocks),
                jnp.asarray(indices),
                counts,
                None,
                tuple(encoded.shape),
                (b, b),
            ),
            tuning,
        )
    bits = 4 if q.bits <= 4 and b % 2 == 0 else 8
    coded, indices, counts = ell_from_coords(out_rows, in_cols, tiles.astype(np.uint8), rows)
    return _planned(
        BlockSparse(
            jnp.asarray(pack_nibbles(coded) if bits == 4 else coded),
            jnp.asarray(indices),
            counts,
            jnp.asarray(q.codebook, jnp.float32),
            tuple(q.shape),
            (b, b),
            bits,
        ),
        tuning,
    )


def split_overflow(w: BlockSparse, width: int, tuning: Tuning | None = None) -> BlockSparse:
    """`w` (concrete counts, no overflow) cut at `width` < Kmax: slots ``width ..`` of the rows
    longer than `width` move to an `Overflow`, Kmax becomes `width`; `row_groups` is re-planned
    (with `tuning`).
    The blocks are sliced where they lie (on the device for the constructors)."""
    rows = np.nonzero(np.asarray(w.counts) > width)[0].astype(np.int32)
    overflow = Overflow(
        jnp.asarray(w.blocks[rows, width:]), jnp.asarray(w.indices[rows, width:]), jnp.asarray(rows)
    )
    cut = dataclasses.replace(
        w, blocks=w.blocks[:, :width], indices=w.indices[:, :width], overflow=overflow
    )
    return _with_plan(cut, tuning)


def _planned(w: BlockSparse, tuning: Tuning | None) -> BlockSparse:
    """A new layout `w` (concrete NumPy counts) with device counts, split by `overflow_width`
    when it holds float values, and its `row_groups` plan recorded (both with `tuning`)."""
    width = overflow_width(w.counts, tuning) if w.bits is None else None
    w = dataclasses.replace(w, counts=jnp.asarray(w.counts))
    return _with_plan(w, tuning) if width is None else split_overflow(w, width, tuning)


def _with_plan(w: BlockSparse, tuning: Tuning | None) -> BlockSparse:
    """`w` (concrete) with the `row_groups` plan of its rows' first Kmax slots recorded."""
    counts = np.minimum(np.asarray(w.counts), w.kmax)
    return dataclasses.replace(
        w, row_groups=row_groups(counts, slot_bytes(w), coded=w.bits is not None, tuning=tuning)
    )


@jax.jit
def todense(w: BlockSparse) -> jax.Array:
    """`BlockSparse.todense`."""
    w = merged(w)
    cols, rows = block_grid(w.shape, w.block)  # (in, out): R = out blocks
    bi, bo = w.block
    r = jnp.broadcast_to(jnp.arange(rows)[:, None], w.indices.shape)
    values = jnp.where(w.valid()[:, :, None, None], w.block_values(), 0).astype(w.dtype)
    grid_blocks = jnp.zeros((rows, cols, bi, bo), w.dtype).at[r, w.indices].add(values)
    m = grid_blocks.transpose(1, 2, 0, 3).reshape(cols * bi, rows * bo)
    k, n = w.matrix_shape
    return m[:k, :n].reshape(w.shape)


def _concrete(name: str, a) -> np.ndarray:
    if isinstance(a, jax.core.Tracer):
        raise LscError(f"{name}: BlockSparse needs a concrete array (its layout depends on values)")
    a = np.asarray(a)
    if a.ndim < 2:
        raise LscError(f"{name}: expected a kernel of rank >= 2, got shape {a.shape}")
    return a
