"""`BlockSparse`: a weight's non-zero b_in x b_out blocks in padded block-row (ELL) layout.

The weight is Flax's kernel: Dense [in, out] (``y = x @ W``) or Conv [*window, in, out]. Every
kernel is held as its matrix view ``kernel.reshape(-1, out)`` = [prod(window) * in, out], the
view of the codecs (`lscjax._src.coding.layout`) and of block pruning, so their blocks are ours.

The matrix [K, N] is cut into ``C = ceil(K / b_in)`` by ``R = ceil(N / b_out)`` blocks
(zero-padded at the edges). Block rows run over the OUTPUT dimension: output block row ``r``
(columns ``r * b_out : (r + 1) * b_out`` of W) owns its non-zero blocks, stored in ascending input
block order in slots ``0 .. counts[r] - 1`` of ``blocks[r]``; slots up to ``Kmax`` are padding.
``y[:, r-block] = sum_k x[:, indices[r, k]-block] @ blocks[r, k]``: one owner per output block,
so the matmul needs no scatter and no atomics.

Block storage (``bits``):

* ``None``: float values ``blocks`` [R, Kmax, b_in, b_out] (any float dtype); padded slots hold 0.
* ``8``: uint8 codes [R, Kmax, b_in, b_out] into ``codebook`` float [n_codes <= 256].
* ``4``: uint8 [R, Kmax, b_in // 2, b_out], two 4-bit codes per byte: byte ``i`` holds the code
  of block row ``i`` in its low nibble and the code of block row ``i + b_in // 2`` in its high
  nibble (so the two halves multiply contiguous halves of x; b_in must be even).

Padded slots of coded blocks are masked to 0.0 when dequantized (code 0 need not mean 0.0).

Row groups (``row_groups``, static): the rows of a random mask differ in length, so padding every
row to Kmax multiplies zeros (Kmax / mean count is 1.6 at 10 % density with 128 block rows). The
constructors record a serving plan: the rows taken in descending count order (a stable sort of
``counts``) and cut into groups of ``ceil(R / n)`` rows, each padded only to its own longest row
(n up to MAX_ROW_GROUPS).
The XLA path multiplies each group on its own (see `row_groups`); the layout above is unchanged.

Overflow (``overflow``, float values): the few longest rows of a random mask set Kmax, and every
other row is padded to them. The constructors cut such a layout at the width ``Kmax`` that leaves
the fewest slots (`overflow_width`): slots ``Kmax ..`` of the rows longer than that move to a
second, compact ELL of those rows only (`Overflow`: blocks [R2, K2, ...], indices [R2, K2], their
output block rows [R2]), as in Bell and Garland's HYB format with an ELL tail. ``counts`` still
counts every block of a row, so ``counts[r] > Kmax`` marks a row that continues in the overflow.
The matmul adds the overflow rows' product to their output blocks by a gather (no scatter).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.coding.codec import decode_qarray
from lscjax._src.coding.lsc import decode_blocks
from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray, check_qarray

CODE_BITS = (4, 8)

# Row-group plan of the XLA path: at most MAX_ROW_GROUPS groups of at least MIN_GROUP_ROWS rows
# (each group is one gather + batched matmul, padded to its own longest row), and more groups
# when a group's dequantized blocks would exceed TEMP_BYTES. Each group costs a call into
# XLA:CPU's batched dot, and pads less: 4-bit codes at 4096^2, 10% random blocks, took 0.24-0.26
# of dense in 8 groups against 0.27-0.29 in 4 (b=32, batch 16) and 0.21-0.23 against 0.24-0.25
# (b=64, batch 64); equal rows gain nothing from either (`benchmarks/matmul_plans.py`, two runs).
MAX_ROW_GROUPS = 8
MIN_GROUP_ROWS = 4
# Largest temporary the XLA path makes at once (a row group's dequantized blocks; the gathered x
# of a piece of x's rows). XLA:CPU was several times slower on larger ones (4-bit codes at 4096^2,
# b=64: 35-40 ms with one 25 MB temporary, 5-7 ms in pieces of <= 8 MB; [4096, 4096] @ 10% blocks
# of 32: 0.82 s with the whole gathered x, 0.25 s in pieces of <= 8 MB, dense 0.49 s).
TEMP_BYTES = 8 * 2**20
# Fewest slots, as a fraction of plain ELL's R * Kmax, that the overflow split must save before the
# constructors make one (float values). Each split adds a product and a gather of its output. At
# 4096^2, 10% random blocks, batch 16, b=32, the split saves 23% of the slots and took 0.164
# of dense against 0.206 in place (`benchmarks/matmul_plans.py`; b=64: 0.137 against 0.161).
MIN_OVERFLOW_SAVING = 0.2


def as_block(block) -> tuple[int, int]:
    """``b`` or ``(b_in, b_out)`` -> ``(b_in, b_out)``; raise LscError unless positive ints."""
    pair = (block, block) if isinstance(block, int | np.integer) else tuple(block)
    if len(pair) != 2 or not all(
        isinstance(b, int | np.integer) and not isinstance(b, bool) and b > 0 for b in pair
    ):
        raise LscError(f"block must be a positive int or a pair of them, got {block!r}")
    return int(pair[0]), int(pair[1])


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """The matrix view [K, N] of a kernel of `shape` (Dense [in, out] or Conv [*window, in, out])."""
    return math.prod(shape[:-1]), shape[-1]


def to_matrix(w):
    """Kernel [*window, in, out] -> its matrix view [prod(window) * in, out] (a reshape)."""
    return w.reshape(matrix_shape(w.shape))


def grid(shape: tuple, block: tuple[int, int]) -> tuple[int, int]:
    """(R, C): output block rows and input block columns of a kernel of `shape`."""
    k, n = matrix_shape(shape)
    return -(-n // block[1]), -(-k // block[0])


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


def row_groups(counts: np.ndarray, slot_bytes: int, *, coded: bool) -> tuple[int, ...]:
    """The row-group plan of a layout: the padded row length of each group.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).
      slot_bytes: bytes of one dequantized block (b_in * b_out * itemsize of the values).
      coded: whether the blocks are codes (dequantized per group, so a group is a fresh small
        temporary either way) rather than float values (which a slice of whole rows multiplies in
        place, and a shortened or reordered group copies).

    Returns:
      ``(k_0, ..., k_{n-1})``: the rows sorted by descending count (stable) are cut into groups
      of ``ceil(R / min(MAX_ROW_GROUPS, R // MIN_GROUP_ROWS))`` rows, fewer where a group's
      Kmax-padded blocks would exceed TEMP_BYTES (the last group may be shorter); ``k_g >= 1``
      is the largest count of group g. Float values whose groups would all keep length Kmax
      (equal rows) are one group, multiplied in place.
    """
    counts = np.asarray(counts)
    rows = counts.size
    if rows == 0:
        return (1,)
    kmax = max(1, int(counts.max()))
    by_bytes = -(-rows // max(1, TEMP_BYTES // (kmax * slot_bytes)))  # groups that fit
    groups = sorted_plan(counts, max(min(MAX_ROW_GROUPS, rows // MIN_GROUP_ROWS), by_bytes))
    if not coded and min(groups) == kmax:
        groups = (kmax,)
    return groups


def sorted_plan(counts: np.ndarray, n: int) -> tuple[int, ...]:
    """The rows of `counts` (int [R], concrete, R >= 1) sorted by descending count and cut into
    at most n groups of `rows_per_group` rows: the longest count of each group (>= 1)."""
    ordered = np.sort(np.asarray(counts))[::-1]
    rows = ordered.size
    size = -(-rows // min(rows, n))  # then `rows_per_group(rows, plan)` == size
    return tuple(max(1, int(ordered[start])) for start in range(0, rows, size))


def rows_per_group(rows: int, groups: tuple[int, ...]) -> int:
    """Rows of each group of a plan of `rows` rows, in descending-count order (the last may
    have fewer)."""
    return -(-rows // len(groups))


def overflow_width(counts: np.ndarray) -> int | None:
    """The ELL width of the overflow split of a float layout, or None for no split.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).

    Returns:
      The width ``w`` in ``[1, max(counts))`` that leaves the fewest slots, ``R * w + R2 *
      (max(counts) - w)`` with R2 the rows longer than w (the smallest such w), if those are at
      most ``1 - MIN_OVERFLOW_SAVING`` of plain ELL's ``R * max(counts)``; else None.
    """
    counts = np.asarray(counts)
    kmax = int(counts.max(initial=0))
    if kmax < 2:
        return None
    widths = np.arange(1, kmax)
    longer = (counts[None, :] > widths[:, None]).sum(axis=1)
    slots = counts.size * widths + longer * (kmax - widths)
    best = int(np.argmin(slots))
    return (
        int(widths[best]) if slots[best] <= (1 - MIN_OVERFLOW_SAVING) * counts.size * kmax else None
    )


def _ell_from_blocked(blocked: np.ndarray, nonzero: np.ndarray):
    """Blocks [R, C, bi, bo] and their non-zero flags bool [R, C] -> `ell_from_coords`."""
    out_rows, in_cols = np.nonzero(nonzero)
    return ell_from_coords(out_rows, in_cols, blocked[out_rows, in_cols], nonzero.shape[0])


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., b_in, b_out] (< 16, b_in even) -> packed uint8 [..., b_in // 2, b_out]."""
    half = codes.shape[-2] // 2
    return (codes[..., :half, :] | (codes[..., half:, :] << 4)).astype(np.uint8)


def unpack_nibbles(packed: jax.Array) -> jax.Array:
    """Inverse of `pack_nibbles`: uint8 [..., h, b_out] -> uint8 codes [..., 2 h, b_out]."""
    return jnp.concatenate([packed & 15, packed >> 4], axis=-2)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Overflow:
    """The slots beyond Kmax of a BlockSparse's longest rows, as a compact ELL of those rows.

    Attributes:
      blocks: [R2, K2, ...], stored like `BlockSparse.blocks`; slot k of overflow row j is slot
        ``Kmax + k`` of output block row ``rows[j]`` (padded slots hold 0).
      indices: int32 [R2, K2]; input block index of each slot.
      rows: int32 [R2], ascending; the output block row each overflow row continues (R2 >= 1).
    """

    blocks: jax.Array
    indices: jax.Array
    rows: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSparse:
    """A block-sparse kernel in padded block-row layout (see the module docstring).

    Attributes:
      blocks: float [R, Kmax, b_in, b_out] (bits None), uint8 codes [R, Kmax, b_in, b_out]
        (bits 8) or packed uint8 [R, Kmax, b_in // 2, b_out] (bits 4).
      indices: int32 [R, Kmax]; input block index of each slot.
      counts: int32 [R]; non-zero blocks of each output block row.
      codebook: float [n_codes] for coded blocks, None for float values.
      shape: static; the logical kernel shape (Dense [in, out] or Conv [*window, in, out]).
      block: static; (b_in, b_out).
      bits: static; None (float values), 8 or 4.
      row_groups: static; the XLA path's row-group plan (`row_groups`), recorded by the
        constructors; None: Kmax-padded groups in row order (`groups`).
      overflow: the slots beyond Kmax of the rows with ``counts > Kmax`` (`Overflow`), or None.
    """

    blocks: jax.Array
    indices: jax.Array
    counts: jax.Array
    codebook: jax.Array | None
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    block: tuple = dataclasses.field(metadata=dict(static=True))
    bits: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    row_groups: tuple | None = dataclasses.field(default=None, metadata=dict(static=True))
    overflow: Overflow | None = None

    @property
    def dtype(self):
        """The dtype of the weight's values (the codebook's for coded blocks)."""
        return self.blocks.dtype if self.codebook is None else self.codebook.dtype

    @property
    def ndim(self) -> int:
        """Rank of the logical kernel."""
        return len(self.shape)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(K, N): the matrix view multiplied by `matmul`."""
        return matrix_shape(self.shape)

    @property
    def kmax(self) -> int:
        """Slots per block row (the padded row length; rows in `overflow` continue there)."""
        return self.indices.shape[1]

    @property
    def block_density(self) -> float:
        """Fraction of the R x C blocks of the matrix view that are stored, over all weights of
        a `stack` (reads ``counts``: concrete weights only, not under jit); 0.0 for an empty
        matrix (no blocks)."""
        if isinstance(self.counts, jax.core.Tracer):
            raise LscError("block_density reads the counts: not available under jit")
        counts = np.asarray(self.counts)
        blocks = counts.size * grid(self.shape, self.block)[1]
        return int(counts.sum()) / blocks if blocks else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the device arrays: blocks, indices, counts and codebook."""
        arrays = jax.tree.leaves((self.blocks, self.indices, self.counts, self.codebook))
        arrays += jax.tree.leaves(self.overflow)
        return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)

    def groups(self) -> tuple[int, ...]:
        """The static row-group plan: `row_groups`, or the plan of equal rows when that is None.

        With no group shorter than Kmax, the XLA path keeps the rows in their stored order.
        """
        if self.row_groups is not None:
            return self.row_groups
        rows = np.full(self.blocks.shape[0], self.kmax)
        return row_groups(rows, _slot_bytes(self), coded=self.bits is not None)

    def valid(self) -> jax.Array:
        """bool [R, Kmax]: True at the slots holding a non-zero block (not padding)."""
        return jnp.arange(self.kmax)[None, :] < self.counts[:, None]

    def overflow_part(self) -> "BlockSparse":
        """The overflow rows as a BlockSparse of R2 rows (blocks [R2, K2, ...], counts of the
        slots beyond Kmax): a part for `block_values` and the products, not a whole weight (its
        `shape` is this weight's). Requires `overflow`."""
        ov = self.overflow
        counts = self.counts[ov.rows] - self.kmax
        return BlockSparse(
            ov.blocks, ov.indices, counts, self.codebook, self.shape, self.block, self.bits
        )

    def block_values(self) -> jax.Array:
        """The blocks as values [R, Kmax, b_in, b_out] of `dtype`, padded slots 0 (jit-friendly).

        Coded blocks are dequantized here (unpacking 4-bit codes); the dense weight is never formed.
        """
        if self.bits is None:
            return self.blocks
        codes = unpack_nibbles(self.blocks) if self.bits == 4 else self.blocks
        values = self.codebook.at[codes.astype(jnp.int32)].get(
            mode="promise_in_bounds"
        )  # < n_codes
        return jnp.where(self.valid()[:, :, None, None], values, jnp.zeros((), values.dtype))

    def todense(self) -> jax.Array:
        """The dense kernel of `shape` and `dtype` (decoding, tests; compiled once per layout).

        Padded slots are ignored (also when differentiating with respect to `blocks`).
        """
        return _todense(self)

    @classmethod
    def from_dense(cls, w, block=(32, 32)) -> "BlockSparse":
        """The non-zero blocks of a concrete dense kernel.

        Args:
          w: float array, Dense [in, out] or Conv [*window, in, out]; must be concrete (the
            layout depends on which blocks are non-zero).
          block: b or (b_in, b_out).

        Returns:
          A float-valued BlockSparse of dtype ``w.dtype``; a block is kept iff it has a non-zero.

        Raises:
          LscError: a traced, non-float or rank < 2 `w`, or a bad `block`.
        """
        block = as_block(block)
        w = _concrete("w", w)
        if not np.issubdtype(w.dtype, np.floating) and w.dtype != jnp.bfloat16:
            raise LscError(f"from_dense: expected a floating-point kernel, got dtype {w.dtype}")
        blocked = _blocked(to_matrix(w), block)
        values, indices, counts = _ell_from_blocked(blocked, (blocked != 0).any(axis=(2, 3)))
        return _planned(
            cls(jnp.asarray(values), jnp.asarray(indices), counts, None, w.shape, block)
        )

    @classmethod
    def from_codes(cls, codes, codebook, block=(32, 32), *, bits: int | None = None):
        """Block-sparse integer codes: the dense kernel is ``codebook[codes]``.

        Args:
          codes: concrete uint8/uint16 (or any int) array, the kernel's shape.
          codebook: float [n_codes].
          block: b or (b_in, b_out).
          bits: 4 or 8 (default: 4 when n_codes <= 16, else 8); with 4, b_in must be even.

        Returns:
          A coded BlockSparse; a block is kept iff one of its codes maps to a non-zero value.

        Raises:
          LscError: more than 2**bits codes, codes out of range, an odd b_in with bits=4.
        """
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
            cls(
                jnp.asarray(coded), jnp.asarray(indices), counts, codebook, codes.shape, block, bits
            )
        )

    @classmethod
    def from_qarray(cls, q: QArray, block=(32, 32), *, path: str = "kernel") -> "BlockSparse":
        """A BlockSparse from a `QArray`.

        Scalar codes with one codebook ("kmeans", "binarize" with a [K] codebook) stay codes
        (4-bit packed when ``q.bits <= 4``, else 8-bit; more than 256 codes are dequantized).
        Vector codes ("product", "residual") and per-row "binarize" ([rows, 2] codebooks) have
        no per-element code, so their dequantized blocks are stored as float32 values.

        Raises:
          LscError: an inconsistent QArray (names `path`).
        """
        check_qarray(path, q)
        scalar = q.method in ("kmeans", "binarize") and q.codebook.ndim == 1
        if scalar and q.codebook.shape[0] <= 256:
            bits = 4 if q.bits <= 4 and as_block(block)[0] % 2 == 0 else 8
            return cls.from_codes(q.codes, q.codebook, block, bits=bits)
        return cls.from_dense(q.dequantize(), block)

    @classmethod
    def from_encoded(cls, encoded) -> "BlockSparse":
        """Decode an LSC `Encoded` straight to this layout, never through a dense matrix.

        The LSC blocks (``lsc.decode_blocks``: b x b tiles of the matrix view, b =
        ``encoded.options["block"]``) become the BlockSparse blocks, block = (b, b). Encoded float
        arrays give float values; the codes of a scalar QArray ("kmeans", "binarize" with a [K]
        codebook, K <= 256) whose codebook[0] is 0.0 stay codes (4-bit packed when ``bits <= 4``
        and b is even, else 8-bit). Other QArrays (vector codes, per-row scales, or a code 0 that
        is not 0.0, so LSC's implicit zero blocks are not zero) go through
        `lscjax.coding.decode_qarray` and `from_qarray`.

        Args:
          encoded: an `Encoded` with format "lsc" of a rank >= 2 array or QArray.

        Returns:
          A BlockSparse whose ``todense()`` equals the decoded array (dequantized for a QArray).

        Raises:
          LscError: not an "lsc" encoding, rank < 2, or a plain array that is not float.
          FormatError: malformed bytes.
        """
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
            return cls.from_qarray(decode_qarray(encoded), encoded.options["block"])
        b = int(encoded.options["block"])
        in_cols, out_rows, tiles = decode_blocks(encoded)
        rows, _ = grid(tuple(encoded.shape), (b, b))
        if q is None:
            blocks, indices, counts = ell_from_coords(out_rows, in_cols, tiles, rows)
            return _planned(
                cls(
                    jnp.asarray(blocks),
                    jnp.asarray(indices),
                    counts,
                    None,
                    tuple(encoded.shape),
                    (b, b),
                )
            )
        bits = 4 if q.bits <= 4 and b % 2 == 0 else 8
        coded, indices, counts = ell_from_coords(out_rows, in_cols, tiles.astype(np.uint8), rows)
        return _planned(
            cls(
                jnp.asarray(pack_nibbles(coded) if bits == 4 else coded),
                jnp.asarray(indices),
                counts,
                jnp.asarray(q.codebook, jnp.float32),
                tuple(q.shape),
                (b, b),
                bits,
            )
        )


def stack(weights) -> BlockSparse:
    """Weights of one layout kind stacked on a new leading axis, for ``jax.vmap`` / ``lax.scan``.

    The layers of a scanned model (or the weight sets of a benchmark) differ in Kmax, in their
    row-group plans and in their overflow rows, which are part of a BlockSparse's pytree
    structure; stacking puts overflow slots back in their rows (`merged`), pads every weight to
    the largest Kmax (zero blocks, the row's last index: ordinary padded slots) and drops the
    plans (``row_groups=None``: the XLA path then multiplies the rows in place).

    Args:
      weights: a non-empty sequence of BlockSparse with equal shape, block, bits, dtypes and
        codebook size.

    Returns:
      A BlockSparse whose arrays have a leading axis of len(weights): blocks [S, R, Kmax, ...],
      indices [S, R, Kmax], counts [S, R], codebook [S, n_codes] or None. Slicing it on that
      axis (``jax.tree.map(lambda a: a[i], stacked)``, or inside vmap / scan) gives weight i.

    Raises:
      LscError: an empty sequence, a non-BlockSparse, or weights that differ in shape, block,
        bits, dtype or codebook size (the message names the first mismatching index).
    """
    weights = list(weights)
    if not weights or not all(isinstance(w, BlockSparse) for w in weights):
        raise LscError("stack: expected a non-empty sequence of BlockSparse")

    def kind(w: BlockSparse) -> tuple:
        book = None if w.codebook is None else (w.codebook.shape, str(w.codebook.dtype))
        return w.shape, w.block, w.bits, str(w.blocks.dtype), book

    for i, w in enumerate(weights):
        if kind(w) != kind(weights[0]):
            raise LscError(
                f"stack: weight {i} is {kind(w)} (shape, block, bits, dtype, codebook), "
                f"weight 0 is {kind(weights[0])}"
            )
    weights = [merged(w) for w in weights]
    kmax = max(w.kmax for w in weights)

    def padded(w: BlockSparse) -> BlockSparse:
        extra = ((0, 0), (0, kmax - w.kmax))
        blocks = jnp.pad(w.blocks, extra + ((0, 0), (0, 0)))
        indices = jnp.pad(w.indices, extra, mode="edge")
        return dataclasses.replace(w, blocks=blocks, indices=indices, row_groups=None)

    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[padded(w) for w in weights])


def merged(w: BlockSparse) -> BlockSparse:
    """`w` without its overflow: the overflow slots back in their rows, Kmax + K2 slots a row
    (row_groups dropped); `w` itself when it has none."""
    ov = w.overflow
    if ov is None:
        return w
    k2, tail = ov.indices.shape[1], slice(w.kmax, None)
    blocks = jnp.pad(w.blocks, ((0, 0), (0, k2)) + ((0, 0),) * (w.blocks.ndim - 2))
    indices = jnp.pad(w.indices, ((0, 0), (0, k2)), mode="edge")
    return dataclasses.replace(
        w,
        blocks=blocks.at[ov.rows, tail].set(ov.blocks),
        indices=indices.at[ov.rows, tail].set(ov.indices),
        row_groups=None,
        overflow=None,
    )


def split_overflow(w: BlockSparse, width: int) -> BlockSparse:
    """`w` (concrete counts, no overflow) cut at `width` < Kmax: slots ``width ..`` of the rows
    longer than `width` move to an `Overflow`, Kmax becomes `width`; `row_groups` is re-planned.
    The blocks are sliced where they lie (on the device for the constructors)."""
    rows = np.nonzero(np.asarray(w.counts) > width)[0].astype(np.int32)
    overflow = Overflow(
        jnp.asarray(w.blocks[rows, width:]), jnp.asarray(w.indices[rows, width:]), jnp.asarray(rows)
    )
    cut = dataclasses.replace(
        w, blocks=w.blocks[:, :width], indices=w.indices[:, :width], overflow=overflow
    )
    return _with_plan(cut)


def _slot_bytes(w: BlockSparse) -> int:
    """Bytes of one dequantized block of `w`."""
    return w.block[0] * w.block[1] * jnp.dtype(w.dtype).itemsize


def _planned(w: BlockSparse) -> BlockSparse:
    """A new layout `w` (concrete NumPy counts) with device counts, split by `overflow_width`
    when it holds float values, and its `row_groups` plan recorded."""
    width = overflow_width(w.counts) if w.bits is None else None
    w = dataclasses.replace(w, counts=jnp.asarray(w.counts))
    return _with_plan(w) if width is None else split_overflow(w, width)


def _with_plan(w: BlockSparse) -> BlockSparse:
    """`w` (concrete) with the `row_groups` plan of its rows' first Kmax slots recorded."""
    counts = np.minimum(np.asarray(w.counts), w.kmax)
    return dataclasses.replace(
        w, row_groups=row_groups(counts, _slot_bytes(w), coded=w.bits is not None)
    )


@jax.jit
def _todense(w: BlockSparse) -> jax.Array:
    w = merged(w)
    rows, cols = grid(w.shape, w.block)
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
