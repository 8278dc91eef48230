"""`CompressedModel` and the .lsc file: `save` / `load` through the checked container.

A CompressedModel holds one `Encoded` per compressed leaf (its bytes are exactly what the file
stores) and the other leaves raw (lossless). The file is the container of lscjax._src.container
with one section per leaf: kind "encoded" (the Encoded's own bytes) or kind "raw" (dtype, shape
and the little-endian array bytes).
"""

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lscjax._src import container
from lscjax._src.checkpoints import check_layout
from lscjax._src.coding.budget import Budget
from lscjax._src.coding.codec import decode, decode_qarray, kept_count
from lscjax._src.coding.encoded import dense_shape, parse
from lscjax._src.coding.validate import check_shape
from lscjax._src.errors import FormatError, LscError
from lscjax._src.quant.qarray import QArray
from lscjax._src.tree import Where, leaves_with_paths, nest, selection, shape_proxy

RAW_DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "bool",
)
LAYOUTS = ("dense", "quantized", "block_sparse", "model")
DEFAULT_BLOCK = 32
MAX_DIRECT_BLOCK = 64


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Storage of one compressed leaf.

    Attributes:
      path: the leaf path, e.g. 'Dense_0/kernel'.
      shape: the dense shape.
      kept: non-zero weights.
      value_bits, index_bits, total_bits: the Encoded's accounting (index = all metadata).
    """

    path: str
    shape: tuple
    kept: int
    value_bits: int
    index_bits: int
    total_bits: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def ratio(self) -> float:
        """Dense float32 bits over total bits."""
        return 32 * self.size / max(self.total_bits, 1)


def leaf_of(enc):
    """The leaf an Encoded holds: its QArray when quantized, else the decoded NumPy array."""
    return decode_qarray(enc) if enc.quantized is not None else decode(enc)


@dataclasses.dataclass(frozen=True)
class CompressedModel:
    """A compressed parameter tree.

    Attributes:
      encoded: {path: Encoded} for the compressed leaves.
      raw: {path: np.ndarray} for the leaves stored losslessly (biases, norms, ...).
      meta: JSON-serializable facts (the recipe, ...), stored in the file header.
    """

    encoded: dict
    raw: dict
    meta: dict = dataclasses.field(default_factory=dict)

    def leaf(self, path: str):
        """One leaf: a QArray for quantized encodings, else the decoded NumPy array."""
        if path in self.raw:
            return self.raw[path]
        return leaf_of(self.encoded[path])

    def quantized_params(self) -> dict:
        """The params as nested dicts, QArray leaves where the values are quantized codes."""
        paths = list(self.encoded) + list(self.raw)
        return nest({p: self.leaf(p) for p in paths})

    def params(self) -> dict:
        """The dense params (nested dicts of jax arrays), dequantized where quantized."""
        paths = list(self.encoded) + list(self.raw)
        return nest({p: _dense(self.leaf(p)) for p in paths})

    def block_sparse_params(
        self,
        block=None,
        *,
        max_density: float | None = None,
        stacked: Where = None,
        where: Where = None,
        in_axes=None,
    ) -> dict:
        """The params in their served form, ready for `lscjax.flax.compressed_apply`: every
        selected compressed kernel as a `BlockSparse` (codes + codebook where quantized), a
        quantized Embed table (a leaf named 'embedding') as its `QArray`, the rest dense.

        An LSC leaf whose stored block suits serving (equal to `block`, or at most
        MAX_DIRECT_BLOCK when `block` is None) is decoded straight to the block layout
        (`BlockSparse.from_encoded`, never through a dense matrix). Other leaves are re-blocked:
        LSC often stores unstructured masks in large blocks (the size that minimizes bits, not
        the one that multiplies fastest); encode with ``format_options={"block": 32}`` to get
        files that load directly.

        Args:
          block: b for every kernel, or None: the stored LSC block where it suits serving, else
            DEFAULT_BLOCK.
          max_density: a kernel with a larger fraction of non-zero blocks is given dense
            (dequantized once): nearly dense kernels are faster dense (default: the measured
            DEFAULT_MAX_DENSITY, see `lscjax.flax.to_block_sparse`).
          stacked: selection (a ``(path, leaf) -> bool`` callable or a bool pytree; default
            none) of kernels whose leading axis stacks layers (Linen ``nn.scan``): converted per
            layer and stacked, as `lscjax.flax.to_block_sparse` does.
          where: selection of the compressed leaves to serve from their compressed form
            (same forms; a leaf is seen as an array of its dense shape); default: all. The
            others are given dense (dequantized), e.g. to leave layers that are not served
            block-sparse alone.
          in_axes: the contracted axes of multi-axis kernels, as in
            `lscjax.flax.to_block_sparse` (default: read from the layer's bias).

        Raises:
          LscError: `max_density` outside [0, 1], a `where` that selects no leaf.
        """
        serve = server(
            self.shapes(),
            block,
            max_density=max_density,
            stacked=stacked,
            where=where,
            in_axes=in_axes,
        )
        return nest({p: serve(p, e) for p, e in self.encoded.items()} | self.raw)

    def shapes(self) -> dict[str, tuple]:
        """{path: dense shape} of every leaf, compressed ones first, in file order."""

        def shape(path: str) -> tuple:
            if path in self.raw:
                return self.raw[path].shape
            enc = self.encoded[path]
            return enc.quantized.shape if enc.quantized is not None else enc.shape

        return {p: tuple(shape(p)) for p in list(self.encoded) + list(self.raw)}

    def layers(self) -> list[LayerStats]:
        """Per-layer storage, in file order."""
        return [
            LayerStats(
                path,
                tuple(enc.shape),
                kept_count(enc),
                enc.value_bits,
                enc.index_bits,
                enc.total_bits,
            )
            for path, enc in self.encoded.items()
        ]

    @property
    def raw_bits(self) -> int:
        """Bits of the losslessly stored leaves."""
        return sum(8 * a.nbytes for a in self.raw.values())

    @property
    def compressed_bits(self) -> int:
        """Accounted bits of the compressed leaves (values + all metadata)."""
        return sum(enc.total_bits for enc in self.encoded.values())

    @property
    def dense_bits(self) -> int:
        """Bits of all leaves as dense float32 (the compressed leaves) plus the raw leaves."""
        return 32 * sum(int(np.prod(e.shape)) for e in self.encoded.values()) + self.raw_bits


def _dense(leaf):
    return leaf.dequantize() if isinstance(leaf, QArray) else jnp.asarray(leaf)


def to_bytes(model: CompressedModel) -> bytes:
    """The .lsc file's bytes for `model`.

    Raises:
      TypeError: `model` is not a CompressedModel.
      LscError: leaf paths that do not nest ('a' and 'a/b'), a raw leaf that a reader would
        refuse (dtype, more than 16 axes), or a layout record (`meta["layout"]`) that does not
        match the leaves' shapes.
    """
    if not isinstance(model, CompressedModel):
        raise TypeError(
            f"model must be a CompressedModel (from lscjax.compress), got {type(model).__name__}"
        )
    try:
        nest(dict.fromkeys(list(model.encoded) + list(model.raw)))
    except FormatError as err:
        raise LscError(f"leaf paths do not form a tree: {err}") from None
    check_layout(model.meta.get("layout"), model.shapes())
    sections = [
        ({"path": p, "kind": "encoded"}, enc.to_bytes()) for p, enc in model.encoded.items()
    ]
    sections += [raw_section(path, array) for path, array in model.raw.items()]
    return container.pack(model.meta, sections)


def server(
    shapes: dict,
    block=None,
    *,
    max_density=None,
    stacked: Where = None,
    where: Where = None,
    in_axes=None,
) -> Callable:
    """``(path, Encoded) -> served leaf`` of `CompressedModel.block_sparse_params` for a file
    whose leaves have the dense shapes `shapes` ({path: shape}, every leaf): the selections
    are resolved from the shapes alone, so each leaf can be served as soon as it is parsed
    (`load(layout="block_sparse")`, one tensor decoded at a time).

    Raises:
      LscError: `max_density` outside [0, 1], a `where` that selects no leaf.
    """
    from lscjax._src.sparse.block_sparse import BlockSparse
    from lscjax._src.sparse.leaf import (
        DEFAULT_MAX_DENSITY,
        TABLE,
        check_max_density,
        leaf_in_ndim,
        served_leaf,
    )

    max_density = DEFAULT_MAX_DENSITY if max_density is None else max_density
    check_max_density(max_density)
    serving_block = DEFAULT_BLOCK if block is None else block
    proxies = nest({p: shape_proxy(s) for p, s in shapes.items()})
    layered = {} if stacked is None else selection(proxies, stacked, allow_empty=True)
    chosen = None if where is None else selection(proxies, where)
    shapes = dict(leaves_with_paths(proxies))

    def direct(enc) -> bool:
        stored = enc.options.get("block") if enc.format == "lsc" else None
        if stored is None or len(enc.shape) < 2:
            return False
        return stored == block if block is not None else stored <= MAX_DIRECT_BLOCK

    def served(path: str, enc):
        if chosen is not None and not chosen.get(path, False):
            return _dense(leaf_of(enc))
        if path.rsplit("/", 1)[-1] == TABLE or len(enc.shape) < 2:
            leaf = leaf_of(enc)
            return leaf if isinstance(leaf, QArray) else _dense(leaf)
        layers = layered.get(path, False)
        in_ndim = leaf_in_ndim(path, shapes, in_axes, layers)
        general = in_ndim not in (None, len(shapes[path].shape) - 1)
        if direct(enc) and not layers and not general:
            w = BlockSparse.from_encoded(enc)
            return w if w.block_density <= max_density else _dense(leaf_of(enc))
        return served_leaf(
            path,
            leaf_of(enc),
            serving_block,
            max_density=max_density,
            stacked=layers,
            in_ndim=in_ndim,
        )

    return served


def raw_section(path: str, array) -> tuple[dict, bytes]:
    """The container section (entry, little-endian bytes) of a leaf stored losslessly.

    Raises:
      LscError: a dtype or shape that a reader would refuse (more than 16 axes, ...).
    """
    array = np.asarray(array)
    if array.dtype.name not in RAW_DTYPES:
        raise LscError(f"leaf {path!r}: cannot store dtype {array.dtype} (expected {RAW_DTYPES})")
    check_shape(array.shape, f"leaf {path!r} shape", LscError)
    entry = {"path": path, "kind": "raw", "dtype": array.dtype.name, "shape": list(array.shape)}
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return entry, little.tobytes()


def _raw_spec(entry: dict) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, bytes) a raw section's header entry declares, checked."""
    path, dtype = entry["path"], entry.get("dtype")
    if dtype not in RAW_DTYPES:
        raise FormatError(f"section {path!r}: unknown raw dtype {dtype!r}")
    shape = check_shape(entry.get("shape"), f"section {path!r} shape")
    np_dtype = jnp.dtype(dtype)
    return np_dtype, shape, math.prod(shape) * np_dtype.itemsize


def _raw_leaf(entry: dict, payload) -> np.ndarray:
    """The array of a raw section (its bytes already charged to the budget)."""
    np_dtype, shape, needed = _raw_spec(entry)
    if needed != len(payload):
        raise FormatError(
            f"section {entry['path']!r}: shape {list(shape)} of {np_dtype.name} needs {needed} "
            f"bytes, the section has {len(payload)}"
        )
    return np.frombuffer(payload, dtype=np_dtype).reshape(shape).copy()


def _leaves(meta: dict, entries: list, payloads, budget: Budget, convert=None):
    """The leaves of a container's sections, parsed (and converted) one at a time.

    The header is checked first: paths (unique, forming a tree), kinds, and the raw leaves'
    sizes, charged to `budget`; then each section is parsed, charging what it declares, and
    handed to ``convert(path, Encoded | np.ndarray)`` (None: kept as parsed) before the next
    is read.

    Returns:
      ({path: encoded leaf}, {path: raw leaf}), each in file order, converted.
    """
    for entry in entries:
        path = entry["path"]
        if entry["kind"] == "raw":
            budget.charge(_raw_spec(entry)[2], f"section {path!r}")
        elif entry["kind"] != "encoded":
            raise FormatError(f"section {path!r}: unknown kind {entry['kind']!r}")
    paths = [entry["path"] for entry in entries]
    if len(set(paths)) < len(paths):
        twice = next(p for i, p in enumerate(paths) if p in paths[:i])
        raise FormatError(f"section {twice!r} appears twice")
    try:
        nest(dict.fromkeys(paths))
    except FormatError as err:
        raise FormatError(f"inconsistent leaf paths: {err}") from None
    encoded, raw, shapes = {}, {}, {}
    for entry, payload in zip(entries, payloads, strict=True):
        path = entry["path"]
        if entry["kind"] == "encoded":
            try:
                leaf = parse(payload, budget)
            except FormatError as err:
                raise FormatError(f"section {path!r}: {err}") from None
            shapes[path] = leaf.quantized.shape if leaf.quantized is not None else leaf.shape
        else:
            leaf = _raw_leaf(entry, payload)
            shapes[path] = leaf.shape
        del payload
        (encoded if entry["kind"] == "encoded" else raw)[path] = (
            leaf if convert is None else convert(path, leaf)
        )
    try:
        check_layout(meta.get("layout"), shapes)
    except LscError as err:
        raise FormatError(f"layout record: {err}") from None
    return encoded, raw


def _read(data: bytes, budget: Budget) -> CompressedModel:
    meta, sections = container.unpack(data)
    entries = [entry for entry, _ in sections]
    encoded, raw = _leaves(meta, entries, (payload for _, payload in sections), budget)
    return CompressedModel(encoded=encoded, raw=raw, meta=meta)


def from_bytes(data: bytes, *, max_bytes: int | None = None) -> CompressedModel:
    """Parse a .lsc file's bytes (every length and CRC checked first).

    Args:
      data: the file's bytes.
      max_bytes: the reading budget: bytes the leaves declared by the file may take when
        decoded (`coding.budget`); default `coding.budget.default_max_bytes(len(data))`.

    Raises:
      FormatError: truncated, corrupted, foreign or unknown-version data, a layout record
        (`meta["layout"]`, PyTorch checkpoints) that does not match the leaves' shapes, or
        declared sizes past `max_bytes`.
    """
    return _read(data, Budget.of(len(data), max_bytes))


def save(path: str | os.PathLike, model: CompressedModel) -> int:
    """Write `model` to `path` (an .lsc file). Returns the file size in bytes."""
    data = to_bytes(model)
    Path(path).write_bytes(data)
    return len(data)


def load(
    path: str | os.PathLike,
    *,
    layout: str = "dense",
    block=None,
    max_density: float | None = None,
    stacked: Where = None,
    where: Where = None,
    max_bytes: int | None = None,
):
    """Read an .lsc file, one section at a time (the file is never held whole).

    The "dense", "quantized" and "block_sparse" layouts decode each tensor as its section is
    read, so the peak memory is the result plus about one tensor being decoded ("block_sparse"
    first reads every section's prefix for the leaves' shapes, which its selections need);
    "model" holds the parsed CompressedModel.

    Args:
      path: the file.
      layout: "dense" (nested dicts of float arrays), "quantized" (QArray leaves where
        quantized), "block_sparse" (BlockSparse kernels, for `lscjax.flax.compressed_apply`),
        or "model" (the CompressedModel itself, e.g. for reports).
      block: the serving block for "block_sparse" (default: the stored LSC block where it suits
        serving, else DEFAULT_BLOCK = 32; see `CompressedModel.block_sparse_params`).
      max_density: for "block_sparse", kernels with a larger fraction of non-zero blocks are
        given dense (dequantized once): nearly dense kernels are faster dense (default: the
        measured DEFAULT_MAX_DENSITY).
      stacked: for "block_sparse", the kernels that stack layers on their leading axis (see
        `CompressedModel.block_sparse_params`).
      where: for "block_sparse", the compressed leaves served from their compressed form
        (default all; the others dense, see `CompressedModel.block_sparse_params`).
      max_bytes: the reading budget: the most bytes the arrays that the file declares may take
        (decoded leaves, and for every layout but "model" the dense float32 weights), checked
        before each is allocated (the raw leaves' sizes, from the header, before any leaf). Default: `DEFAULT_EXPANSION` (1024) times the file size,
        at least 256 MiB (`lscjax._src.coding.budget`); pass a larger int to read more.

    Raises:
      FormatError: the file is truncated, corrupted, foreign or of an unknown version, or it
        declares more than `max_bytes`.
      LscError: an unknown layout, `max_density` outside [0, 1].
    """
    if layout not in LAYOUTS:
        raise LscError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    size = Path(path).stat().st_size
    budget = Budget.of(size, max_bytes)
    convert = None
    if layout == "block_sparse":  # the selections need every leaf's shape: a first pass
        shapes = _dense_shapes(path, Budget.of(size, max_bytes))
        serve = server(shapes, block, max_density=max_density, stacked=stacked, where=where)

        def convert(leaf_path: str, leaf):
            if isinstance(leaf, np.ndarray):
                return leaf
            _charge_dense(budget, leaf_path, leaf)
            return serve(leaf_path, leaf)

    elif layout in ("dense", "quantized"):

        def convert(leaf_path: str, leaf):
            if isinstance(leaf, np.ndarray):
                return leaf if layout == "quantized" else jnp.asarray(leaf)
            _charge_dense(budget, leaf_path, leaf)
            one = leaf_of(leaf)
            return one if layout == "quantized" else _dense(one)

    meta, entries, payloads = container.read_sections(path)
    with contextlib.closing(payloads):
        encoded, raw = _leaves(meta, entries, payloads, budget, convert)
    if layout == "model":
        return CompressedModel(encoded=encoded, raw=raw, meta=meta)
    return nest(encoded | raw)


def _dense_shapes(path, budget: Budget) -> dict:
    """{leaf path: dense shape} of every section of the file, from the container header and
    each encoded section's prefix (no body is decoded)."""
    _, entries, payloads = container.read_sections(path)
    shapes = {}
    with contextlib.closing(payloads):
        for entry, payload in zip(entries, payloads, strict=True):
            if entry["kind"] == "raw":
                shapes[entry["path"]] = tuple(_raw_spec(entry)[1])
            elif entry["kind"] == "encoded":  # other kinds: refused by the second pass
                shapes[entry["path"]] = _section_shape(entry["path"], payload, budget)
    return shapes


def _section_shape(path: str, payload: bytes, budget: Budget) -> tuple:
    try:
        return dense_shape(payload, budget)
    except FormatError as err:
        raise FormatError(f"section {path!r}: {err}") from None


def _charge_dense(budget: Budget, path: str, enc) -> None:
    shape = enc.quantized.shape if enc.quantized is not None else enc.shape
    budget.charge(4 * math.prod(shape), f"the dense weights of {path!r}")
