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
constructors (`lscjax._src.sparse.convert`) record a serving plan: the rows taken in descending
count order (a stable sort of ``counts``) and cut into groups of ``ceil(R / n)`` rows, each padded
only to its own longest row (n up to `Tuning.max_row_groups`). The XLA path multiplies each group on
its own (see `row_groups`); the layout above is unchanged.

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

from lscjax._src.coding.layout import block_grid
from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import QArray

CODE_BITS = (4, 8)


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
      shape: static; the logical kernel shape (Dense [in, out] or Conv ``[*window, in, out]``).
      block: static; (b_in, b_out).
      bits: static; None (float values), 8 or 4.
      row_groups: static, keyword-only; the XLA path's row-group plan
        (`lscjax._src.sparse.plan.row_groups`), recorded by the constructors; None: Kmax-padded
        groups in row order.
      overflow: keyword-only; the slots beyond Kmax of the rows with ``counts > Kmax``
        (`Overflow`), or None.
    """

    blocks: jax.Array
    indices: jax.Array
    counts: jax.Array
    codebook: jax.Array | None
    shape: tuple = dataclasses.field(metadata=dict(static=True))
    block: tuple = dataclasses.field(metadata=dict(static=True))
    bits: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    row_groups: tuple | None = dataclasses.field(
        default=None, kw_only=True, metadata=dict(static=True)
    )
    overflow: Overflow | None = dataclasses.field(default=None, kw_only=True)

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
        blocks = counts.size * block_grid(self.shape, self.block).in_blocks
        return int(counts.sum()) / blocks if blocks else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the device arrays: blocks, indices, counts and codebook."""
        arrays = jax.tree.leaves((self.blocks, self.indices, self.counts, self.codebook))
        arrays += jax.tree.leaves(self.overflow)
        return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)

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
        from lscjax._src.sparse import convert

        return convert.todense(self)

    @classmethod
    def from_dense(cls, w, block=(32, 32), *, tuning=None) -> "BlockSparse":
        """The non-zero blocks of a concrete dense kernel.

        Args:
          w: float array, Dense [in, out] or Conv ``[*window, in, out]``; must be concrete (the
            layout depends on which blocks are non-zero).
          block: b or (b_in, b_out).
          tuning: the thresholds of the layout's overflow split and row-group plan
            (`lscjax.sparse.Tuning`; default measured on XLA:CPU).

        Returns:
          A float-valued BlockSparse of dtype ``w.dtype``; a block is kept iff it has a non-zero.

        Raises:
          LscError: a traced, non-float or rank < 2 `w`, or a bad `block`.
        """
        from lscjax._src.sparse import convert

        return convert.from_dense(w, block, tuning=tuning)

    @classmethod
    def from_codes(cls, codes, codebook, block=(32, 32), *, bits: int | None = None, tuning=None):
        """Block-sparse integer codes: the dense kernel is ``codebook[codes]``.

        Args:
          codes: concrete uint8/uint16 (or any int) array, the kernel's shape.
          codebook: float [n_codes].
          block: b or (b_in, b_out).
          bits: 4 or 8 (default: 4 when n_codes <= 16, else 8); with 4, b_in must be even.
          tuning: the thresholds of the row-group plan (`lscjax.sparse.Tuning`).

        Returns:
          A coded BlockSparse; a block is kept iff one of its codes maps to a non-zero value.

        Raises:
          LscError: more than 2**bits codes, codes out of range, an odd b_in with bits=4.
        """
        from lscjax._src.sparse import convert

        return convert.from_codes(codes, codebook, block, bits=bits, tuning=tuning)

    @classmethod
    def from_qarray(
        cls, q: QArray, block=(32, 32), *, path: str = "kernel", tuning=None
    ) -> "BlockSparse":
        """A BlockSparse from a `QArray`.

        Scalar codes with one codebook ("kmeans", "binarize" with a [K] codebook) stay codes
        (4-bit packed when ``q.bits <= 4``, else 8-bit; more than 256 codes are dequantized).
        Vector codes ("product", "residual") and per-row "binarize" ([rows, 2] codebooks) have
        no per-element code, so their dequantized blocks are stored as float32 values.
        `tuning` is passed to `from_codes` / `from_dense`.

        Raises:
          LscError: an inconsistent QArray (names `path`).
        """
        from lscjax._src.sparse import convert

        return convert.from_qarray(q, block, path=path, tuning=tuning)

    @classmethod
    def from_encoded(cls, encoded, *, tuning=None) -> "BlockSparse":
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
          tuning: the thresholds of the layout's plan (`lscjax.sparse.Tuning`).

        Returns:
          A BlockSparse whose ``todense()`` equals the decoded array (dequantized for a QArray).

        Raises:
          LscError: not an "lsc" encoding, rank < 2, or a plain array that is not float.
          FormatError: malformed bytes.
        """
        from lscjax._src.sparse import convert

        return convert.from_encoded(encoded, tuning=tuning)
