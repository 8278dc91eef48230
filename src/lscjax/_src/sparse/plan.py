"""The plan of the sparse path: every choice a block-sparse product makes, in one frozen object.

A `BlockSparse` product takes one of several paths, decided at two times:

* when a layout is built (`lscjax._src.sparse.convert`, from the concrete counts): whether a
  float layout's longest rows are split into an `Overflow` (`overflow_width`), and the row-group
  plan of the XLA path (`row_groups`), recorded in ``BlockSparse.row_groups``;
* when `lscjax.sparse.matmul` is traced (from the static shapes): the kernel (`resolve_impl`),
  the row groups actually multiplied (float rows in place for x of few rows), the pieces of x's
  rows, the form of each product (one product per slot or per row), and the pieces of the
  backward pass.

`plan` makes the second set of choices and reads the first from the layout; the result, a `Plan`,
is the static configuration of the product, and `explain` prints it. Every threshold is a field
of `Tuning`, whose defaults were chosen by the benchmarks in docs/results/sparse.md; pass another
`Tuning` to the constructors (layout choices) and to `matmul` / `conv` (call choices).

Row groups: the rows of a random mask differ in length, so padding every row to Kmax multiplies
zeros (Kmax / mean count is 1.6 at 10 % density with 128 block rows). The rows are taken in
descending count order (a stable sort of ``counts``) and cut into groups of ``ceil(R / n)`` rows,
each padded only to its own longest row (n up to ``Tuning.max_row_groups``).

Overflow: the few longest rows of a random mask set Kmax; `overflow_width` is the ELL width at
which cutting those rows into a second, compact ELL (`lscjax._src.sparse.block_sparse.Overflow`)
leaves the fewest slots.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.kernels import cpu
from lscjax._src.sparse.block_sparse import BlockSparse

IMPLS = ("auto", "xla", "cpu", "pallas", "pallas_gpu", "pallas_tpu")
_NATIVE = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}


@dataclasses.dataclass(frozen=True)
class Tuning:
    """The thresholds of the sparse path's choices (defaults measured on XLA:CPU).

    Attributes:
      max_row_groups: at most this many row groups in the XLA path's plan. Each group is one
        gather + batched matmul padded to its own longest row: a call into XLA:CPU's batched dot,
        and less padding. 4-bit codes at 4096^2, 10% random blocks, took 0.24-0.26 of dense in 8
        groups against 0.27-0.29 in 4 (b=32, batch 16) and 0.21-0.23 against 0.24-0.25 (b=64,
        batch 64); equal rows gain nothing from either (`benchmarks/matmul_plans.py`, two runs).
      min_group_rows: at least this many block rows per group (fewer groups for small layers).
      temp_bytes: the largest temporary the XLA path makes at once (a row group's dequantized
        blocks; the gathered x of a piece of x's rows, forward and backward). XLA:CPU was several
        times slower on larger ones (4-bit codes at 4096^2, b=64: 35-40 ms with one 25 MB
        temporary, 5-7 ms in pieces of <= 8 MB; [4096, 4096] @ 10% blocks of 32: 0.82 s with the
        whole gathered x, 0.25 s in pieces of <= 8 MB, dense 0.49 s).
      min_overflow_saving: the fewest slots, as a fraction of plain ELL's R * Kmax, that the
        overflow split must save before the constructors make one (float values). Each split adds
        a product and a gather of its output. At 4096^2, 10% random blocks, batch 16, b=32, the
        split saves 23% of the slots and took 0.164 of dense against 0.206 in place
        (`benchmarks/matmul_plans.py`; b=64: 0.137 against 0.161).
      float_in_place_max_rows: rows of x up to which float values are multiplied in place (one
        Kmax-padded group in stored order) rather than in the sorted row groups. Reordering float
        rows copies every block, which at few rows of x costs more than multiplying the padding;
        the padding's FLOPs grow with the rows. 4096^2, 10% random blocks, f32 / dense, in place
        against 8 sorted groups (`benchmarks/matmul_plans.py`, two runs): batch 16 b=32 0.19-0.21
        vs 0.23-0.25, b=64 0.16 vs 0.20-0.23; batch 64 b=32 0.43 vs 0.34-0.38, b=64 0.24-0.25 vs
        0.22. A sweep of 16-64 rows (one run) agreed for b=32 (in place ahead up to 32 rows,
        groups from 48) but had groups ahead for b=64 at every row count (0.20 vs 0.23 at 16
        rows): noise of that size.
      slot_form_max_rows: rows of x (of one piece) above which a product batches over block rows
        instead of slots. The slot form's fused sum over Kmax writes every [M, b_out] product
        into the row's accumulator, which XLA:CPU does several times slower once M reaches a few
        hundred rows; from 2 rows up to this bound it avoids the row form's transposed copy of
        the gathered x, which at M = 1 is free. Large kernels are cut into pieces of x's rows
        far below this bound (`temp_bytes`: 24 rows at 4096^2, 10% of 32 x 32 blocks), where the
        slot form is 1.3-1.5x faster (`benchmarks/matmul_forms.py`). all-MiniLM-L6-v2's kernels
        at 1024 rows are not cut, and there the row form is faster: with this bound at 128
        instead of 1024, `benchmarks/serve_density.py` measured the median block-sparse / dense
        ratio at 10% of the blocks 0.71 instead of 0.95 (worst point 1.07 instead of 2.38).
    """

    max_row_groups: int = 8
    min_group_rows: int = 4
    temp_bytes: int = 8 * 2**20
    min_overflow_saving: float = 0.2
    float_in_place_max_rows: int = 32
    slot_form_max_rows: int = 128


DEFAULT = Tuning()


def _tuning(tuning: Tuning | None) -> Tuning:
    if tuning is None:
        return DEFAULT
    if not isinstance(tuning, Tuning):
        raise LscError(
            f"tuning must be a lscjax.sparse.Tuning or None, got {type(tuning).__name__}"
        )
    return tuning


def _is_pow2_tile(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _fits(kernel: str, w: BlockSparse) -> bool:
    """Whether `kernel` compiles for `w`'s tiles on real hardware (interpret mode has no limits)."""
    b_in = w.block[0] // 2 if w.bits == 4 else w.block[0]
    if kernel == "pallas_gpu":
        return _is_pow2_tile(b_in) and _is_pow2_tile(w.block[1])
    return b_in % 128 == 0 and w.block[1] % 128 == 0


def resolve_impl(impl: str, w: BlockSparse, interpret: bool = False, x_dtype=jnp.float32) -> str:
    """The path `matmul` takes: "xla", "cpu", "pallas_gpu" or "pallas_tpu".

    "auto" picks the Pallas kernel of the default backend when `w`'s tiles fit it; on the CPU,
    the compiled kernel (`lscjax._src.kernels.cpu`) when it is built and takes the operands
    (float32 x and values, output blocks of 16, 32 or 64), else XLA. "pallas" picks the
    backend's kernel (on CPU, the GPU kernel in interpret mode).

    Raises:
      LscError: unknown `impl`, a Pallas kernel requested on CPU without ``interpret=True``, or
        "cpu" where the CPU kernel cannot run (another backend, not built, operands it does not
        take).
    """
    if impl not in IMPLS:
        raise LscError(f"impl must be one of {IMPLS}, got {impl!r}")
    backend = jax.default_backend()
    cpu_fits = cpu.available() and cpu.fits(w.block[1], x_dtype, w.dtype)
    if impl == "auto":
        kernel = _NATIVE.get(backend)
        if kernel is not None:
            return kernel if _fits(kernel, w) else "xla"
        return "cpu" if backend == "cpu" and cpu_fits else "xla"
    if impl == "cpu":
        if backend != "cpu" or not cpu_fits:
            why = (
                f"the backend is {backend!r}"
                if backend != "cpu"
                else "lscjax was installed without its compiled kernel (no C++ compiler?)"
                if not cpu.available()
                else f"it takes float32 x and values with output blocks of {cpu.B_OUT}, got "
                f"x {jnp.dtype(x_dtype).name}, values {jnp.dtype(w.dtype).name}, blocks "
                f"{tuple(w.block)}"
            )
            raise LscError(f"impl='cpu' cannot run here: {why}; use impl='xla' or 'auto'")
        return impl
    if impl == "pallas":
        impl = _NATIVE.get(backend, "pallas_gpu")
    if impl != "xla" and not interpret and _NATIVE.get(backend) != impl:
        raise LscError(f"impl={impl!r} needs its device (backend is {backend!r}) or interpret=True")
    return impl


def row_groups(
    counts: np.ndarray, slot_bytes: int, *, coded: bool, tuning: Tuning | None = None
) -> tuple[int, ...]:
    """The row-group plan of a layout: the padded row length of each group.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).
      slot_bytes: bytes of one dequantized block (b_in * b_out * itemsize of the values).
      coded: whether the blocks are codes (dequantized per group, so a group is a fresh small
        temporary either way) rather than float values (which a slice of whole rows multiplies in
        place, and a shortened or reordered group copies).
      tuning: the thresholds (default `Tuning()`).

    Returns:
      ``(k_0, ..., k_{n-1})``: the rows sorted by descending count (stable) are cut into groups
      of ``ceil(R / min(max_row_groups, R // min_group_rows))`` rows, fewer where a group's
      Kmax-padded blocks would exceed ``temp_bytes`` (the last group may be shorter); ``k_g >= 1``
      is the largest count of group g. Float values whose groups would all keep length Kmax
      (equal rows) are one group, multiplied in place.
    """
    t = _tuning(tuning)
    counts = np.asarray(counts)
    rows = counts.size
    if rows == 0:
        return (1,)
    kmax = max(1, int(counts.max()))
    by_bytes = -(-rows // max(1, t.temp_bytes // (kmax * slot_bytes)))  # groups that fit
    groups = sorted_plan(counts, max(min(t.max_row_groups, rows // t.min_group_rows), by_bytes))
    if not coded and min(groups) == kmax:
        groups = (kmax,)
    return groups


def sorted_plan(counts: np.ndarray, n: int) -> tuple[int, ...]:
    """The rows of `counts` (int [R], concrete, R >= 1) sorted by descending count and cut into
    at most n groups of `rows_per_group` rows: the longest count of each group (>= 1)."""
    ordered = np.sort(np.asarray(counts))[::-1]
    rows = ordered.size
    size = -(-rows // min(rows, max(1, n)))  # then `rows_per_group(rows, plan)` == size
    return tuple(max(1, int(ordered[start])) for start in range(0, rows, size))


def rows_per_group(rows: int, groups: tuple[int, ...]) -> int:
    """Rows of each group of a plan of `rows` rows, in descending-count order (the last may
    have fewer)."""
    return -(-rows // len(groups))


def overflow_width(counts: np.ndarray, tuning: Tuning | None = None) -> int | None:
    """The ELL width of the overflow split of a float layout, or None for no split.

    Args:
      counts: int [R], non-zero blocks per output block row (concrete).
      tuning: the thresholds (default `Tuning()`).

    Returns:
      The width ``w`` in ``[1, max(counts))`` that leaves the fewest slots, ``R * w + R2 *
      (max(counts) - w)`` with R2 the rows longer than w (the smallest such w), if those are at
      most ``1 - min_overflow_saving`` of plain ELL's ``R * max(counts)``; else None.
    """
    t = _tuning(tuning)
    counts = np.asarray(counts)
    kmax = int(counts.max(initial=0))
    if kmax < 2:
        return None
    widths = np.arange(1, kmax)
    longer = (counts[None, :] > widths[:, None]).sum(axis=1)
    slots = counts.size * widths + longer * (kmax - widths)
    best = int(np.argmin(slots))
    fits = slots[best] <= (1 - t.min_overflow_saving) * counts.size * kmax
    return int(widths[best]) if fits else None


def slot_bytes(w: BlockSparse) -> int:
    """Bytes of one dequantized block of `w`."""
    return w.block[0] * w.block[1] * jnp.dtype(w.dtype).itemsize


def row_pieces(m: int, row_bytes: int, tuning: Tuning) -> int:
    """Pieces of an x of m rows whose gathered x (`row_bytes` per row) fits ``temp_bytes``
    (1: all rows at once)."""
    piece = max(1, tuning.temp_bytes // max(1, row_bytes))
    return 1 if m <= piece else -(-m // piece)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every choice of one block-sparse product ``x @ W`` (static; hashable).

    Attributes:
      shape, block, bits: W's static fields (`BlockSparse`).
      rows, kmax: R and Kmax of W's layout; overflow_rows: R2, the rows continued in W's
        `Overflow` (0 without one; the split is made by the constructors).
      m: rows of x (its leading dimensions flattened); x_itemsize: bytes of one element of x.
      kernel: "xla", "cpu", "pallas_gpu" or "pallas_tpu" (`resolve_impl`); interpret: Pallas
        interpret mode.
      groups: the row groups the XLA path multiplies, each padded to its length (None for a
        kernel, which loops over each row's counts).
      sorted_rows: whether those groups take the rows in descending-count order (else in stored
        order, plain slices).
      pieces: the XLA path gathers x in this many pieces of its rows, in sequence (1: at once);
        piece_rows: rows of each piece (the last zero-padded).
      form: "slot" (one product per slot, summed over each row's slots) or "row" (one product per
        row) for the XLA path's products; None for a Pallas kernel.
      grad_pieces: pieces of x's rows in the backward pass (always the XLA path), for W's
        rows and for its overflow rows.
      tuning: the `Tuning` these choices were made with.
    """

    shape: tuple
    block: tuple
    bits: int | None
    rows: int
    kmax: int
    overflow_rows: int
    m: int
    x_itemsize: int
    kernel: str
    interpret: bool
    groups: tuple | None
    sorted_rows: bool
    pieces: int
    piece_rows: int
    form: str | None
    grad_pieces: tuple
    tuning: Tuning

    def explain(self) -> str:
        """The path of the product, one line per choice (`lscjax.sparse.explain`)."""
        t, (bi, bo) = self.tuning, self.block
        storage = "float values" if self.bits is None else f"{self.bits}-bit codes"
        lines = [
            f"x [{self.m}, {math.prod(self.shape[:-1])}] @ BlockSparse {list(self.shape)}: "
            f"blocks of {bi}x{bo}, {storage}, {self.rows} block rows of Kmax {self.kmax} slots",
            f"kernel: {self.kernel}" + (" (interpret mode)" if self.interpret else ""),
            "overflow: none"
            if not self.overflow_rows
            else f"overflow: {self.overflow_rows} rows continue past slot {self.kmax} in a "
            "second product, added to their output blocks",
        ]
        if self.kernel == "xla":
            order = "descending-count order" if self.sorted_rows else "stored order"
            lines.append(
                f"row groups: {len(self.groups)}, padded to {list(self.groups)} slots, rows in {order}"
                + (
                    f" (float values, x rows {self.m} <= float_in_place_max_rows "
                    f"{t.float_in_place_max_rows}: in place)"
                    if self.bits is None and self.m <= t.float_in_place_max_rows
                    else ""
                )
            )
            lines.append(
                f"x rows: {self.pieces} piece(s) of {self.piece_rows} (gathered x <= temp_bytes "
                f"{t.temp_bytes})"
            )
            lines.append(
                f"products: {self.form} form ("
                + (
                    f"1 < {self.piece_rows} rows <= slot_form_max_rows {t.slot_form_max_rows}"
                    if self.form == "slot"
                    else f"{self.piece_rows} rows: 1 or > slot_form_max_rows {t.slot_form_max_rows}"
                )
                + ")"
            )
        lines.append(f"backward: XLA path, x rows in {list(self.grad_pieces)} piece(s)")
        return "\n".join(lines)


def plan(
    x_shape: tuple,
    w: BlockSparse,
    *,
    x_dtype=jnp.float32,
    impl: str = "auto",
    interpret: bool = False,
    tuning: Tuning | None = None,
) -> Plan:
    """The `Plan` of ``matmul(x, w, impl=impl, interpret=interpret, tuning=tuning)``.

    Args:
      x_shape: the shape of x, [..., K] (the leading dimensions are flattened into rows).
      w: the BlockSparse weight (concrete or traced: only its static shapes are read).
      x_dtype: the dtype of x (sizes the gathered x).
      impl, interpret: as for `lscjax.sparse.matmul`.
      tuning: the thresholds (default `Tuning()`); the layout's own choices (its overflow and
        ``row_groups``) were made by its constructor.

    Returns:
      The frozen `Plan`; ``plan(...).explain()`` describes it.

    Raises:
      LscError: a bad `impl` or `tuning` (see `resolve_impl`).
    """
    t = _tuning(tuning)
    kernel = resolve_impl(impl, w, interpret, x_dtype)
    m = math.prod(x_shape[:-1])
    rows, kmax = w.indices.shape
    itemsize = jnp.dtype(x_dtype).itemsize
    ov = w.overflow
    overflow_rows, overflow_slots = (0, 0) if ov is None else ov.indices.shape
    groups, sorted_rows, pieces, piece_rows, form = None, False, 1, m, None
    if kernel == "xla":
        if w.bits is None and m <= t.float_in_place_max_rows:
            groups = (kmax,)
        elif w.row_groups is not None:
            groups = w.row_groups
        else:
            groups = row_groups(
                np.full(rows, kmax), slot_bytes(w), coded=w.bits is not None, tuning=t
            )
        sorted_rows = min(groups) < kmax
        slots = rows_per_group(rows, groups) * sum(groups) + overflow_rows * overflow_slots
        pieces = row_pieces(m, slots * w.block[0] * itemsize, t)
        piece_rows = -(-m // pieces)
        form = "slot" if 1 < piece_rows <= t.slot_form_max_rows else "row"
    grad = [rows * kmax] + ([overflow_rows * overflow_slots] if ov is not None else [])
    grad_pieces = tuple(row_pieces(m, s * w.block[0] * itemsize, t) for s in grad)
    return Plan(
        shape=tuple(w.shape),
        block=tuple(w.block),
        bits=w.bits,
        rows=rows,
        kmax=kmax,
        overflow_rows=overflow_rows,
        m=m,
        x_itemsize=itemsize,
        kernel=kernel,
        interpret=bool(interpret),
        groups=groups,
        sorted_rows=sorted_rows,
        pieces=pieces,
        piece_rows=piece_rows,
        form=form,
        grad_pieces=grad_pieces,
        tuning=t,
    )


def explain(x_shape: tuple, w: BlockSparse, **options) -> str:
    """The path ``matmul(x, w, **options)`` takes, one line per choice (print it).

    Args:
      x_shape: the shape of x, [..., K].
      w: the BlockSparse weight.
      **options: x_dtype, impl, interpret, tuning: as for `plan`.

    Returns:
      ``plan(x_shape, w, **options).explain()``.

    Example:
      >>> w = lscjax.sparse.BlockSparse.from_dense(kernel, block=(32, 32))
      >>> print(lscjax.sparse.explain((16, kernel.shape[0]), w))  # doctest: +ELLIPSIS
      x [16, 96] @ BlockSparse [96, 64]: blocks of 32x32, float values, ...
      kernel: cpu
      ...
    """
    return plan(x_shape, w, **options).explain()
