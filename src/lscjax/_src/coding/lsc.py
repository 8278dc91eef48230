"""Layerwise Sparse Coding ("lsc", Liu et al. 2020): a block layer, then SRI inside the blocks.

The tensor's matrix view [R, C] (`layout.matrix_shape`; conv HWIO -> [H * W * I, O]) is cut into
b x b blocks, a grid of ceil(R / b) x ceil(C / b) blocks in row-major order; the blocks of the last
grid row / column are clipped to the matrix (h x w, h, w <= b). A block is non-zero when any of
its elements is. Non-zero blocks are flattened row-major over their h * w elements and coded with
SRI (`sri.py`), the gaps restarting at every block, so each block's entries and values decode alone
from the per-block offsets.

Body (bit fields, see docs/format.md for a worked example):

1. gamma(b), gamma(k)
2. the block bitmask: one bit per grid block, row-major (1 = non-zero)
3. gamma(Wn), then per non-zero block but the last (n_j - 1) in Wn bits, n_j = its non-zeros
   (the last block's count is that of the value entries in its stream)
4. gamma(WL), then per non-zero block L_j in WL bits: the length of its entry stream, in bits
   for entropy "huffman", in entries for "none" (k bits each) and "ans"
5. the entry-symbol table and the entry stream (entropy stage; "ans": one rANS stream)
6. the values, block after block (blocked row-major order)

Block j's entries start at sum(L_i, i < j) (bits, or entries) and its values at sum(n_i, i < j):
with "none" or "huffman" and raw values each block decodes alone (`decode_block`); a rANS stream
or entropy-coded codes are decoded once and then split (`decode_blocks`).
Unless given, b is the candidate (BLOCK_CANDIDATES) giving the fewest total bits, each with its
k in 1..16 minimizing the entry table + stream bits (above EXACT_SEARCH_ELEMENTS elements b
minimizes an estimate computed from the block counts).
"""

import dataclasses
import math
from collections.abc import Iterable

import numpy as np

from lscjax._src.coding import sri
from lscjax._src.coding.bitstream import INDEX, BitReader, BitWriter, gamma_bits, unpack_uints
from lscjax._src.coding.entropy import SymbolCoder, index_entropy
from lscjax._src.coding.layout import block_grid, gap_table, gaps, matrix_shape, segment_ends
from lscjax._src.coding.values import ValueCodec
from lscjax._src.errors import FormatError, LscError
from lscjax._src.parallel import elementwise, row_spans, shared_map

BLOCK_CANDIDATES = (4, 8, 16, 32, 64, 128, 256, 512)
MAX_BLOCK = 4096
EXACT_SEARCH_ELEMENTS = 2**16
"""Up to this many elements every candidate b is encoded and counted exactly; above it b is the
candidate with the fewest estimated bits (`estimated_bits`) and only k is chosen exactly."""


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """The non-zeros of one tensor in blocked order, for one block size.

    Attributes:
      block: b.
      occupied: bool [grid rows * grid cols], the block bitmask.
      counts: int64 [nb], non-zeros per non-zero block (nb = occupied.sum()); all but the last
        are stored.
      offsets: int64 [m], each non-zero's row-major offset inside its block, clipped to the
        matrix (an edge block is h x w with h, w <= b, flattened over its h * w elements).
      flat: int64 [m], each non-zero's flat C-order position in the tensor.
      starts: bool [m], True at each block's first non-zero.
    """

    block: int
    occupied: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    flat: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, nonzero: np.ndarray, block: int) -> "BlockPlan":
        """Plan for the bool matrix `nonzero` [R, C] with b = `block`: planned in bands of
        whole block rows (shared with idle threads, `parallel.shared_map`), joined in order."""
        bands = row_spans(*nonzero.shape, unit=block) or [slice(0, 0)]
        parts = shared_map(lambda band: cls._band(nonzero, band, block), bands)
        if len(parts) == 1:
            return parts[0]
        fields = ("occupied", "counts", "offsets", "flat", "starts")
        return cls(block, *(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    @classmethod
    def _band(cls, nonzero: np.ndarray, band: slice, block: int) -> "BlockPlan":
        """The plan of the rows `band` of `nonzero` (starting on a block row), its flat
        positions in the whole matrix."""
        first = band.start * nonzero.shape[1]
        nonzero = nonzero[band]
        rows, cols = nonzero.shape
        grid_rows, grid_cols = block_grid(nonzero.shape, (block, block))  # (in, out)
        padded = nonzero
        if (grid_rows * block, grid_cols * block) != (rows, cols):
            padded = np.zeros((grid_rows * block, grid_cols * block), bool)
            padded[:rows, :cols] = nonzero
        tiles = padded.reshape(grid_rows, block, grid_cols, block).transpose(0, 2, 1, 3)
        tile, inside = np.divmod(np.flatnonzero(tiles), block * block)
        starts = np.ones(tile.size, bool)
        starts[1:] = tile[1:] != tile[:-1]
        occupied = np.zeros(grid_rows * grid_cols, bool)
        occupied[tile] = True
        row = (tile // grid_cols) * block + inside // block
        col = (tile % grid_cols) * block + inside % block
        width = tile_extent(tile % grid_cols, block, cols)
        counts = np.diff(np.append(np.flatnonzero(starts), tile.size))
        offsets = (inside // block) * width + inside % block
        return cls(block, occupied, counts, offsets, first + row * cols + col, starts)


def tile_extent(index: np.ndarray, block: int, size: int) -> np.ndarray:
    """Rows (or columns) int64 [t] of the blocks at grid row (or column) `index` int [t]: b,
    or what is left of `size` for the last one."""
    return np.minimum(block, size - index * block)


def _block_sums(per_value: np.ndarray, plan: BlockPlan) -> np.ndarray:
    starts = np.flatnonzero(plan.starts)
    return np.add.reduceat(per_value, starts) if starts.size else np.zeros(0, np.int64)


def _width_field_bits(values: np.ndarray) -> tuple[int, int]:
    width = int(values.max()).bit_length() if values.size else 0
    return width, gamma_bits(width) + width * values.size


@dataclasses.dataclass(frozen=True)
class BlockCode:
    """A block plan with its SRI code.

    Attributes:
      plan: the `BlockPlan`.
      k: the SRI entry width, minimizing the entry table + stream bits for this plan.
      coder: the entry-symbol `SymbolCoder`.
      gaps: int64 [m], each non-zero's gap inside its block.
      lengths: int64 [nb], each block's entry stream length (bits for "huffman", else entries).
      index_bits: every index bit of the body after the prefix (rANS streams: estimated).
    """

    plan: BlockPlan
    k: int
    coder: SymbolCoder
    gaps: np.ndarray
    lengths: np.ndarray
    index_bits: int

    @classmethod
    def of(cls, plan: BlockPlan, entropy: str, k=None) -> "BlockCode":
        """Choose k for `plan` and account every index bit the body will hold."""
        z = gaps(plan.offsets, plan.starts)
        distinct, counts, inverse = gap_table(z)
        k, coder = sri.choose_k(distinct, counts, entropy, k)
        if entropy == "huffman":
            units = sri.gap_code_bits(distinct, coder)[inverse]
        else:
            units = sri.entry_counts(distinct, k)[inverse]
        lengths = _block_sums(units, plan)
        hist = sri.histogram(distinct, counts, k)
        bits = gamma_bits(plan.block) + gamma_bits(k) + plan.occupied.size
        bits += _width_field_bits(plan.counts[:-1] - 1)[1] + _width_field_bits(lengths)[1]
        bits += coder.table_bits() + coder.stream_bits(hist)
        return cls(plan, k, coder, z, lengths, bits)


def _tile_sums(a: np.ndarray, factor: int) -> np.ndarray:
    """Sums of the `factor` x `factor` tiles of a [R, C] (zero-padded at the edges): strided
    adds, no sort or bincount."""
    rows, cols = -(-a.shape[0] // factor), -(-a.shape[1] // factor)
    padded = np.zeros((rows * factor, cols * factor), a.dtype)
    padded[: a.shape[0], : a.shape[1]] = a
    down = sum(padded[i::factor] for i in range(factor))
    return sum(down[:, j::factor] for j in range(factor))


def candidate_counts(nonzero: np.ndarray) -> dict:
    """{b: non-zeros per block int64 [grid rows, grid cols]} for every b in BLOCK_CANDIDATES
    (powers of two), from the bool matrix `nonzero` [R, C]: tile sums of the smallest b, then
    2 x 2 sums of those for each next b."""
    base = BLOCK_CANDIDATES[0]
    counts = _tile_sums(nonzero.view(np.uint8), base).astype(np.int64)  # <= 16 a tile
    out = {base: counts}
    for smaller, block in zip(BLOCK_CANDIDATES, BLOCK_CANDIDATES[1:], strict=False):
        counts = _tile_sums(counts, block // smaller)
        out[block] = counts
    return out


def estimated_bits(counts: np.ndarray, block: int, shape: tuple) -> float:
    """Estimated index bits of LSC with b = `block` from the block counts int [grid rows, grid
    cols]: the block bitmask, two per-block fields of ~log2(b^2) bits, and the entropy
    h * w * H2(n / (h * w)) of each non-zero block's positions."""
    rows, cols = matrix_shape(shape)
    area = np.outer(
        tile_extent(np.arange(counts.shape[0]), block, rows),
        tile_extent(np.arange(counts.shape[1]), block, cols),
    )
    occupied = np.count_nonzero(counts)
    partial = (counts > 0) & (counts < area)  # full and empty blocks have no entropy
    n, area = counts[partial], area[partial]
    p = n / area
    entropy = -(n * np.log2(p) + (area - n) * np.log2(1 - p))
    field = 2 * (block * block).bit_length()
    return counts.size + occupied * field + float(entropy.sum())


def _candidates(nonzero: np.ndarray, shape: tuple) -> tuple:
    if nonzero.size <= EXACT_SEARCH_ELEMENTS:
        return BLOCK_CANDIDATES
    counts = candidate_counts(nonzero)
    bits = shared_map(lambda b: estimated_bits(counts[b], b, shape), BLOCK_CANDIDATES)
    return (BLOCK_CANDIDATES[int(np.argmin(bits))],)


def check_block(block) -> int:
    """LscError unless block is an int in [1, MAX_BLOCK]."""
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        raise LscError(f"lsc: block must be an int in [1, {MAX_BLOCK}], got {block!r}")
    return block


def write(
    w: BitWriter,
    bits: np.ndarray,
    shape: tuple,
    values: ValueCodec,
    entropy: str,
    *,
    block=None,
    k=None,
) -> dict:
    """Write bit patterns [n] in the LSC layout (module docstring)."""
    nonzero = elementwise(lambda part: part != 0, bits, dtype=bool).reshape(matrix_shape(shape))
    candidates = _candidates(nonzero, shape) if block is None else (check_block(block),)
    k = None if k is None else sri.check_k(k)
    code = min(
        (BlockCode.of(BlockPlan.of(nonzero, b), entropy, k) for b in candidates),
        key=lambda c: c.index_bits,
    )
    plan = code.plan
    w.gamma(plan.block)
    w.gamma(code.k)
    w.uints(plan.occupied, 1)
    for field in (plan.counts[:-1] - 1, code.lengths):
        width = _width_field_bits(field)[0]
        w.gamma(width)
        w.uints(field, width)
    code.coder.write_table(w, INDEX)
    code.coder.write(w, sri.entries(code.gaps, code.k), INDEX)
    values.write(w, bits[plan.flat])
    return {"block": plan.block, "k": code.k}


@dataclasses.dataclass(frozen=True)
class Blocks:
    """The decoded non-zero blocks of an LSC body.

    Attributes:
      block: b.
      k: the SRI entry width.
      grid: (grid rows, grid cols).
      tiles: int64 [nb], row-major grid index of each non-zero block, ascending.
      owner: int64 [m], index into `tiles` of each non-zero.
      offsets: int64 [m], each non-zero's row-major offset inside its b x b block (row * b + col).
      values: unsigned bit patterns [m].
    """

    block: int
    k: int
    grid: tuple
    tiles: np.ndarray
    owner: np.ndarray
    offsets: np.ndarray
    values: np.ndarray


def _read_entries(r: BitReader, coder: SymbolCoder, lengths: np.ndarray, entropy: str, bound: int):
    """The entry symbols int64 [e] (in pieces, `SymbolCoder.read_pieces`) and the entries per
    block int64 [nb]; at most `bound` entries."""
    total = int(lengths.sum())
    if entropy != "huffman" and total > bound:
        raise FormatError(f"bad lsc block lengths: {total} exceeds the {bound} possible")
    if entropy != "huffman":
        return coder.read_pieces(r, total, INDEX, "lsc entries"), lengths
    symbols = coder.decode(r.take(total, "lsc entries"), "lsc entries")
    ends = segment_ends(coder.code_lengths()[symbols])
    block_ends = np.searchsorted(ends, segment_ends(lengths), side="right")
    reached = np.concatenate([[0], ends])[block_ends]
    if np.any(reached != segment_ends(lengths)):
        raise FormatError("bad lsc block lengths: a block ends inside a Huffman code")
    return [symbols], np.diff(block_ends, prepend=0)


@dataclasses.dataclass(frozen=True)
class Directory:
    """What an LSC body holds before its streams: enough to find and decode any one block.

    Attributes:
      block, k, grid: b, the SRI entry width, (grid rows, grid cols).
      tiles: int64 [nb], row-major grid index of each non-zero block, ascending.
      counts: int64 [nb - 1], non-zeros of every non-zero block but the last.
      lengths: int64 [nb], each block's entry stream length (bits for "huffman", else entries).
      coder: the entry-symbol code.
      stream_start: bit position of the first block's entries in the body.
    """

    block: int
    k: int
    grid: tuple
    tiles: np.ndarray
    counts: np.ndarray
    lengths: np.ndarray
    coder: SymbolCoder
    stream_start: int


def read_directory(r: BitReader, shape: tuple, entropy: str) -> Directory:
    """Parse an LSC body up to its entry streams (items 1-5 of the module docstring)."""
    block = r.gamma("lsc block size", limit=MAX_BLOCK)
    k = r.gamma("lsc k", limit=sri.K_RANGE.stop - 1)
    if block < 1 or k < 1:
        raise FormatError(f"bad lsc header: block {block}, k {k}")
    grid = block_grid(shape, (block, block))
    tiles = np.flatnonzero(r.uints(grid.in_blocks * grid.out_blocks, 1, "lsc block bitmask"))
    fields = []
    for what, size in (("lsc block counts", tiles.size - 1), ("lsc block lengths", tiles.size)):
        width = r.gamma(f"{what} width", limit=64)
        fields.append(r.uints(max(size, 0), width, what).astype(np.int64))
    counts, lengths = fields[0] + 1, fields[1]
    if counts.size and counts.max() > block * block:
        raise FormatError("bad lsc block counts: more non-zeros than a block holds")
    coder = SymbolCoder.read_table(r, entropy, k, INDEX, "lsc entry")
    return Directory(block, k, grid, tiles, counts, lengths, coder, r.pos)


def _place(d: Directory, shape: tuple, pieces: Iterable, per_block: np.ndarray, first: int):
    """(owner int64 [m], offset row * b + col int64 [m]) of the value entries of the blocks
    first .. first + len(per_block) - 1, from their entry symbols int [e] in consecutive
    pieces (`sri.value_reaches`); validated."""
    ends = segment_ends(per_block)
    index, reach, before = sri.value_reaches(pieces, d.k, ends - per_block)
    owner = np.searchsorted(ends, index, side="right")  # each value entry's block
    offsets = reach - before[owner] - 1
    owner = owner + first
    rows, cols = matrix_shape(shape)
    tile = d.tiles[owner]
    height = tile_extent(tile // d.grid[1], d.block, rows)
    width = tile_extent(tile % d.grid[1], d.block, cols)
    if np.any(offsets >= height * width):
        raise FormatError("bad lsc entries: a position falls outside its block")
    found = np.bincount(owner - first, minlength=per_block.size)
    stored = d.counts[first : first + per_block.size]
    if np.any(found[: stored.size] != stored) or np.any(found == 0):
        raise FormatError("bad lsc entries: non-zeros per block differ from the block counts")
    return owner, (offsets // width) * d.block + offsets % width


def read_blocks(r: BitReader, shape: tuple, values: ValueCodec, dtype, entropy: str) -> Blocks:
    """Parse an LSC body (after the common prefix) into its non-zero blocks, validating it."""
    d = read_directory(r, shape, entropy)
    pieces, per_block = _read_entries(r, d.coder, d.lengths, entropy, math.prod(shape))
    owner, offsets = _place(d, shape, pieces, per_block, 0)
    vals = values.read(r, offsets.size, dtype)
    return Blocks(d.block, d.k, d.grid, d.tiles, owner, offsets, vals)


def decode_block(encoded, index: int) -> np.ndarray:
    """Decode the non-zero block `index` alone, from the per-block offsets.

    Only the directory, that block's entries (from bit sum(L_i, i < index) of the entry stream)
    and its values (from value sum(n_i, i < index)) are read: nothing of the other blocks.

    Args:
      encoded: an "lsc" `Encoded` with entropy "none" or "huffman" and raw values (floats, or
        codes with entropy "none"); a rANS stream or entropy-coded codes decode together
        (`decode_blocks`).
      index: in [0, nb), the block's rank among the non-zero blocks (row-major).

    Returns:
      The block [b, b] of `encoded.dtype` (zero-padded at the matrix edge).

    Raises:
      LscError: another format, an rANS stream or entropy-coded values, index out of range.
      FormatError: malformed bytes.
    """
    if encoded.format != "lsc" or encoded.entropy not in ("none", "huffman"):
        raise LscError("decode_block needs an 'lsc' encoding with entropy 'none' or 'huffman'")
    r, values = encoded.reader()
    if values.coded:
        raise LscError("entropy-coded codes decode together: use decode_blocks")
    d = read_directory(r, encoded.shape, encoded.entropy)
    if not 0 <= index < d.tiles.size:
        raise LscError(f"block index {index} outside the {d.tiles.size} non-zero blocks")
    unit = 1 if encoded.entropy == "huffman" else d.k
    r.pos = d.stream_start + unit * int(d.lengths[:index].sum())
    bits = r.take(unit * int(d.lengths[index]), "lsc block entries")
    if encoded.entropy == "huffman":
        symbols = d.coder.decode(bits, "lsc block entries")
    else:
        symbols = unpack_uints(bits, int(d.lengths[index]), d.k).astype(np.int64)
    _, offsets = _place(d, encoded.shape, [symbols], np.array([symbols.size]), index)
    r.pos = d.stream_start + unit * int(d.lengths.sum())
    r.pos += values.width * int(d.counts[:index].sum())
    vals = values.read(r, offsets.size, encoded.dtype)
    out = np.zeros(d.block * d.block, vals.dtype)
    out[offsets] = vals
    return out.view(encoded.dtype).reshape(d.block, d.block)


def read(r: BitReader, shape: tuple, n: int, values: ValueCodec, dtype, entropy: str):
    """-> (positions int64 [m], values [m], options)."""
    blocks = read_blocks(r, shape, values, dtype, entropy)
    rows, cols = matrix_shape(shape)
    b = blocks.block
    tile = blocks.tiles[blocks.owner]
    row = (tile // blocks.grid[1]) * b + blocks.offsets // b
    col = (tile % blocks.grid[1]) * b + blocks.offsets % b
    return row * cols + col, blocks.values, {"block": b, "k": blocks.k}


def decode_blocks(encoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero b x b blocks of an "lsc" `Encoded`, without building the dense matrix.

    Blocks refer to the matrix view (`layout.matrix_shape`: conv HWIO -> [H * W * I, O]); edge
    blocks are zero-padded to b x b. b is ``encoded.options["block"]``.

    Args:
      encoded: an `Encoded` with format "lsc".

    Returns:
      (block_rows int32 [nb], block_cols int32 [nb], blocks [nb, b, b] of `encoded.dtype`,
      the codes for a QArray): the grid row / column of each non-zero block, sorted row-major.

    Raises:
      LscError: not an "lsc" encoding. FormatError: malformed bytes.
    """
    if encoded.format != "lsc":
        raise LscError(f"decode_blocks needs an 'lsc' encoding, got {encoded.format!r}")
    r, values = encoded.reader()
    blocks = read_blocks(r, encoded.shape, values, encoded.dtype, index_entropy(encoded.entropy))
    b = blocks.block
    r.budget.charge(blocks.tiles.size * b * b * encoded.dtype.itemsize, "the lsc blocks")
    out = np.zeros((blocks.tiles.size, b * b), blocks.values.dtype)
    out[blocks.owner, blocks.offsets] = blocks.values
    rows, cols = np.divmod(blocks.tiles, blocks.grid[1])
    tiles = out.view(encoded.dtype).reshape(-1, b, b)
    return rows.astype(np.int32), cols.astype(np.int32), tiles
