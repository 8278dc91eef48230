"""Streaming compression of safetensors checkpoints: one tensor in memory at a time, on every core.

`compress_file` reads a `.safetensors` file, or Hugging Face's multi-file checkpoint (a folder or
its ``model.safetensors.index.json``) by positioned reads, one tensor at a time; prunes, quantizes and
encodes each as it comes; and writes the .lsc file section by section. The file is byte for byte
the one `lscjax.compress` + `lscjax.save` write for the same params and recipe, for any number of
workers: tensors are encoded in parallel threads (NumPy and the coders release the GIL) and
written in the order of the in-memory path, and a thread with nothing else to do takes slices
of a large tensor's work (`lscjax._src.parallel`: its pruning, counts, k-means assignment, LSC
block planning and SRI entries; only the rANS coding of a stream is one call).

One global magnitude threshold (the "global" sparsity of the recipes) needs every selected weight
before any is pruned: it is found exactly by a radix selection over the float32 bit patterns of
``|w|`` (two passes of 16-bit histograms over pieces of CHUNK elements, read and counted in
parallel), with ties broken as `lscjax.prune.magnitude` does (the lower flat index, in leaf
order, is kept).
"""

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lscjax._src import container
from lscjax._src.checkpoints import LAYOUTS, is_torch_layout, layout_shape, torch_layout
from lscjax._src.coding.codec import encode
from lscjax._src.compress import RECIPES, Recipe, recipe_meta
from lscjax._src.compressed import CompressedModel, raw_section
from lscjax._src.errors import FormatError, LscError
from lscjax._src.hf_layout import apply_transform
from lscjax._src.parallel import elementwise, row_spans, shared_map, sharing
from lscjax._src.prune.distributions import layer_sparsities
from lscjax._src.prune.magnitude import check_sparsity, keep_count, topk_mask
from lscjax._src.quant.kmeans import MAX_ITERS, TOL, channel_kmeans_leaf, kmeans_leaf
from lscjax._src.tree import (
    Where,
    check_float_leaf,
    leaves_with_paths,
    nest,
    selection,
    shape_proxy,
)

INDEX_NAME = "model.safetensors.index.json"
CHUNK = 1 << 22
"""Elements per piece when histogramming a tensor (bounds the temporaries to ~16 MiB each)."""
_HALF = 1 << 16


DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
"""safetensors dtype names -> NumPy's (bfloat16: ml_dtypes', as JAX uses)."""
MAX_HEADER_BYTES = 1 << 27


def _header(file: Path, size: int) -> tuple[int, dict]:
    """(offset of the data, {key: (shape, dtype name, begin, end)}) of a .safetensors file,
    every entry checked against the file size; FormatError otherwise."""
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{file}: not a .safetensors file (shorter than 8 bytes)")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise FormatError(f"{file}: header of {length} bytes does not fit the file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError) as err:
            raise FormatError(f"{file}: header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{file}: header is not a JSON object")
    start, out = 8 + length, {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape = np.dtype(jnp.dtype(DTYPES[entry["dtype"]])), tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            valid = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid or end - begin != math.prod(shape) * dtype.itemsize or start + end > size:
            raise FormatError(f"{file}: tensor {key!r} has a bad header entry {entry!r}")
        out[key] = (shape, dtype.name, start + begin, start + end)
    return start, out


class SafetensorsSource:
    """The tensors of a safetensors checkpoint, read one at a time.

    Each read copies a tensor's bytes from the file (positioned reads, no memory map), so the
    process's resident memory holds the tensors in use, not the file; `pieces` reads one in
    pieces, each on its own.

    Keys are leaf paths as `lscjax._src.checkpoints.read_checkpoint` gives them: split on '/'
    when any key has one, else on '.', with a top-level 'params' group unwrapped; a PyTorch /
    Hugging Face state dict (dotted names, 'weight' leaves) is converted per tensor to Flax's
    names and orientation by the same rules (`checkpoints.torch_layout`), each tensor
    re-oriented as it is read.

    Args:
      path: a `.safetensors` file, a `model.safetensors.index.json` index, or a folder holding
        either (an index, or exactly one `.safetensors` file).
      layout: "auto" (PyTorch when `checkpoints.is_torch_layout` says so), "flax" or "torch",
        as `read_checkpoint`'s.

    Attributes:
      files: the `.safetensors` files, in index order.
      paths: {leaf path: (file index, key, shape, dtype name)} in flattening order (the Flax
        shape of a converted tensor).
      layout: the layout record of a converted PyTorch checkpoint (as `read_checkpoint`'s),
        or None.

    Raises:
      FileNotFoundError: no such file, or a file the index names is missing.
      FormatError: an index or file that does not parse, or conflicting keys.
      LscError: an unknown `layout`, a PyTorch tensor the conversion has no rule for.
    """

    def __init__(self, path: str | os.PathLike, layout: str = "auto"):
        if layout not in LAYOUTS:
            raise LscError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.files = _resolve_files(Path(path))
        self._spans = {}
        keys: dict[str, tuple] = {}
        for i, file in enumerate(self.files):
            _, entries = _header(file, file.stat().st_size)
            for key, (shape, dtype, begin, end) in entries.items():
                if key in keys:
                    raise FormatError(f"{file}: tensor {key!r} also in {self.files[keys[key][0]]}")
                keys[key] = (i, key, shape, dtype)
                self._spans[key] = (begin, end)
        self.layout, self._transforms = None, {}
        if layout == "torch" or (layout == "auto" and is_torch_layout(keys)):
            # sorted: the order safetensors' own reader gives the in-memory path
            specs = {k: (keys[k][2], np.dtype(jnp.dtype(keys[k][3]))) for k in sorted(keys)}
            self.layout = torch_layout(specs)
            named = {}
            for leaf, entry in self.layout.items():
                file, key, shape, dtype = keys[entry["source"]]
                named[leaf] = (file, key, layout_shape(shape, entry["transform"]), dtype)
                self._transforms[leaf] = entry["transform"]
            tree = nest({leaf: leaf for leaf in named})
        else:
            named = keys
            sep = "/" if any("/" in k for k in keys) else "."
            tree = nest({k.replace(sep, "/"): k for k in keys})
            if isinstance(tree.get("params"), dict):
                tree = tree["params"]
        self.paths = {p: named[k] for p, k in leaves_with_paths(tree)}

    def shape_tree(self) -> dict:
        """The params as nested zero-cost arrays of the tensors' shapes (for `where=`)."""
        return nest({p: shape_proxy(info[2]) for p, info in self.paths.items()})

    def read(self, path: str) -> np.ndarray:
        """The tensor at leaf `path`, in its shape and dtype (native byte order)."""
        f, little, shape = self._open(path)
        out = np.empty(shape, little)
        with f:
            _read_into(f, out.reshape(-1).view(np.uint8))
        out = out.astype(little.newbyteorder("="), copy=False)
        if path not in self._transforms:
            return out
        return apply_transform(out, self._transforms[path])

    def pieces(self, path: str, size: int = CHUNK) -> list[Callable[[], np.ndarray]]:
        """The tensor at leaf `path` flattened (a converted PyTorch tensor's in its stored
        orientation), as readers of consecutive pieces of at most `size` elements: each call
        reads its piece into a new array (native byte order) by a positioned read of its own,
        so the pieces of one tensor can be read in parallel."""
        total = math.prod(self._stored_shape(path))
        return [
            functools.partial(self._read_range, path, start, min(start + size, total))
            for start in range(0, total, size)
        ]

    def _read_range(self, path: str, start: int, stop: int) -> np.ndarray:
        f, little, _ = self._open(path)
        out = np.empty(stop - start, little)
        with f:
            f.seek(start * little.itemsize, os.SEEK_CUR)
            _read_into(f, out.view(np.uint8))
        return out.astype(little.newbyteorder("="), copy=False)

    def _open(self, path: str):
        """(the unbuffered file at the tensor's first byte, its little-endian dtype, its shape
        as stored)."""
        file, key, _, dtype = self.paths[path]
        f = open(self.files[file], "rb", buffering=0)  # noqa: SIM115 -- the callers close it
        f.seek(self._spans[key][0])
        return f, np.dtype(jnp.dtype(dtype)).newbyteorder("<"), self._stored_shape(path)

    def _stored_shape(self, path: str) -> tuple:
        if path in self._transforms:
            return tuple(self.layout[path]["source_shape"])
        return self.paths[path][2]


def _read_into(f, out: np.ndarray) -> None:
    """Fill the uint8 array `out` from the unbuffered file `f` at its position."""
    view, done = memoryview(out), 0
    while done < out.size:
        got = f.readinto(view[done:])
        if not got:
            raise FormatError(f"{f.name}: file ends inside a tensor (truncated?)")
        done += got


def streams(path: str | os.PathLike) -> bool:
    """Whether `compress_file` reads `path`: a .safetensors file, an index, or a folder with
    either."""
    path = Path(path)
    if path.is_dir():
        return (path / INDEX_NAME).exists() or any(path.glob("*.safetensors"))
    return path.suffix.lower() == ".safetensors" or path.name.endswith(".safetensors.index.json")


def _resolve_files(path: Path) -> list[Path]:
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        if (path / INDEX_NAME).exists():
            path = path / INDEX_NAME
        else:
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise FormatError(
                    f"{path}: expected {INDEX_NAME} or exactly one .safetensors file, "
                    f"found {len(found)}"
                )
            return found
    if path.name.endswith(".json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise FormatError(f"{path}: not a safetensors index ({err})") from None
        files = [path.parent / name for name in names]
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"{path}: names {file.name}, which is missing")
        return files
    if path.suffix.lower() != ".safetensors":
        raise LscError(f"{path}: streaming reads .safetensors files or their index")
    return [path]


def _abs_bits(w: np.ndarray) -> np.ndarray:
    """uint32 bit patterns of |w| as float32 (ordered like the magnitudes)."""
    return np.abs(np.asarray(w, np.float32)).view(np.uint32)


_NOT_FINITE = 0x7F80
"""The high 16 bits of |w|'s float32 pattern from which it is Inf or NaN."""


def _hi_histogram(path: str, piece: np.ndarray) -> np.ndarray:
    hist = np.bincount(_abs_bits(piece).reshape(-1) >> 16, minlength=_HALF)
    if hist[_NOT_FINITE:].any():
        raise LscError(f"leaf {path!r}: contains NaN or Inf")
    return hist


def _lo_histogram(piece: np.ndarray, hi: int) -> np.ndarray:
    bits = _abs_bits(piece).reshape(-1)
    return np.bincount(bits[(bits >> 16) == hi] & (_HALF - 1), minlength=_HALF)


def _split(hist: np.ndarray, k: int) -> tuple[int, int]:
    """(bin, count above it) such that count above < k <= count above + hist[bin]."""
    above = np.cumsum(hist[::-1])[::-1] - hist  # elements in higher bins
    return (b := int(np.flatnonzero((above < k) & (above + hist >= k))[-1])), int(above[b])


@dataclasses.dataclass(frozen=True)
class GlobalThreshold:
    """The exact global top-k of magnitudes, as a rule per leaf.

    Attributes:
      bits: the float32 bit pattern of the k-th largest |w| (None when k == 0: nothing kept).
      ties: {path: how many weights equal to it that leaf keeps} (its lowest flat indices).
    """

    bits: int | None
    ties: dict

    def mask(self, path: str, w: np.ndarray) -> np.ndarray:
        """bool mask (True = kept) of `w` [any shape]."""
        if self.bits is None:
            return np.zeros(w.shape, bool)
        keep = elementwise(lambda part: _abs_bits(part) > self.bits, w, dtype=bool)
        budget = self.ties.get(path, 0)
        if budget:
            flat = w.reshape(-1)
            equal = shared_map(
                lambda span: np.flatnonzero(_abs_bits(flat[span]) == self.bits) + span.start,
                row_spans(flat.size, 1),
            )
            keep.reshape(-1)[np.concatenate(equal)[:budget]] = True
        return keep


def global_threshold(
    pieces: Callable, paths: list[str], sparsity: float, pool, window: int
) -> GlobalThreshold:
    """The exact global magnitude threshold of the leaves `paths` (in order), reading each
    tensor twice as ``pieces(path)``: callables each returning a float array, whose elements,
    in order, are the leaf's. The pieces of every leaf are histogrammed in `pool`, at most
    `window` + 1 at a time, so one large leaf is shared by every thread.

    Raises:
      LscError: a leaf with NaN or Inf (named).
    """
    sparsity = check_sparsity(sparsity)
    tasks = [(path, read) for path in paths for read in pieces(path)]

    def per_leaf(histogram: Callable) -> dict:
        out = {path: np.zeros(_HALF, np.int64) for path in paths}
        for (path, _), hist in zip(tasks, _ordered(pool, histogram, tasks, window), strict=True):
            out[path] += hist
        return out

    hists = per_leaf(lambda task: _hi_histogram(task[0], task[1]()))
    total = int(sum(h.sum() for h in hists.values()))
    k = keep_count(total, sparsity)
    if k == 0:
        return GlobalThreshold(None, {})
    hi, above_hi = _split(sum(hists.values()), k)
    lows = per_leaf(lambda task: _lo_histogram(task[1](), hi))
    lo, above_lo = _split(sum(lows.values()), k - above_hi)
    budget = k - above_hi - above_lo
    ties = {}
    for path in paths:
        ties[path] = min(budget, int(lows[path][lo]))
        budget -= ties[path]
    return GlobalThreshold((hi << 16) | lo, ties)


def _masker(rc: Recipe, source: SafetensorsSource, chosen: dict, pool, window: int) -> tuple:
    """((path, w) -> bool mask, for the recipe's one-shot magnitude pruning; whether finding
    it read every selected leaf and refused NaN / Inf already)."""
    paths = [p for p, c in chosen.items() if c]
    if rc.prune not in ("magnitude", "gradual"):
        raise LscError(f"streaming compression prunes one-shot; recipe prune={rc.prune!r} trains")
    if isinstance(rc.sparsity, Mapping):
        proxies = source.shape_tree()
        per_leaf = layer_sparsities(proxies, rc.sparsity, where=lambda p, _: chosen[p])

        def mask(path, w):
            return np.asarray(topk_mask(np.abs(w), keep_count(w.size, per_leaf[path])))

        return mask, False

    def pieces(path):
        dtype = source.paths[path][3]
        check_float_leaf(path, np.zeros((), jnp.dtype(dtype)), finite=False)
        return source.pieces(path)

    return global_threshold(pieces, paths, rc.sparsity, pool, window).mask, True


def _compress_leaf(path: str, w: np.ndarray, mask, rc: Recipe, quant_key):
    """One selected leaf: pruned (in place when `w` is a C-contiguous writeable array),
    quantized to its bits, encoded -> Encoded."""
    if not (w.flags.c_contiguous and w.flags.writeable):
        w = np.array(w)
    flat, drop = w.reshape(-1), mask.reshape(-1)
    shared_map(lambda span: np.copyto(flat[span], 0, where=~drop[span]), row_spans(w.size, 1))
    bits = rc.bits_for(path, w)
    if bits > 0:
        clustered = channel_kmeans_leaf if rc.per_channel_for(path) else kmeans_leaf
        w = clustered(w, bits, init=rc.init, iters=MAX_ITERS, tol=TOL, key=quant_key)
    return encode(w, rc.format, entropy=rc.entropy, **rc.format_options)


def compress_file(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    recipe: str | Recipe = "lsc",
    *,
    where: Where = None,
    workers: int | None = None,
    progress: Callable | None = None,
    layout: str = "auto",
) -> CompressedModel:
    """Compress a safetensors checkpoint into an .lsc file, one tensor in memory at a time.

    The result is byte-identical to ``save(output, compress(ckpt.params, recipe, where=where,
    layout=ckpt.layout))`` with ``ckpt = read_checkpoint(checkpoint, layout=layout)`` for
    recipes that prune one-shot (no `retrain`), whatever `workers`; a PyTorch / Hugging Face
    state dict is converted to Flax's names and orientation one tensor at a time.

    Args:
      checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a folder with
        either (`SafetensorsSource`).
      output: the .lsc file to write (a temporary ``output + ".part"`` is used on the way).
      recipe: "lsc", "deep_compression" or a `Recipe` with prune "magnitude" or "gradual".
      where: the leaves to compress (default: 'kernel' leaves with ndim >= 2); a callable
        sees zero-cost arrays of each leaf's shape, not its values.
      workers: threads encoding tensors in parallel (default: every core).
      progress: called with each leaf path as it is written.
      layout: "auto", "flax" or "torch" (`SafetensorsSource`).

    Returns:
      A CompressedModel for reports: the encoded leaves, and the raw ones as zero-cost arrays
      of their shape and dtype (the file holds their values).

    Raises:
      LscError: an unknown recipe, a training recipe, one with per-layer rules or
        quant="rdq", a
        PyTorch tensor the conversion has no rule for, a bad leaf (named), `workers` < 1.
      FormatError: a checkpoint that does not parse.
    """
    rc = RECIPES.get(recipe) if isinstance(recipe, str) else recipe
    if rc is None:
        raise LscError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    if rc.rules:
        raise LscError("compress_file takes no per-layer rules (Recipe.rules): use lscjax.compress")
    if rc.quant != "kmeans":
        raise LscError(
            f"compress_file quantizes with k-means only, got Recipe.quant={rc.quant!r} (its "
            "target is met over all layers at once): use lscjax.compress"
        )
    workers = (os.cpu_count() or 1) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LscError(f"workers must be an int >= 1, got {workers!r}")
    source = SafetensorsSource(checkpoint, layout)
    chosen = selection(source.shape_tree(), where)
    import jax

    quant_key = jax.random.fold_in(jax.random.key(0), 0)
    output = Path(output)
    parts = [output.with_name(output.name + suffix) for suffix in (".part", ".raw.part")]
    encoded, raw, sections = {}, {}, {"encoded": [], "raw": []}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        mask, scanned = _masker(rc, source, chosen, pool, workers)

        def job(path):
            w = source.read(path)
            if not chosen[path]:
                return raw_section(path, w), w
            check_float_leaf(path, w, finite=not scanned)  # the threshold passes checked
            with sharing(pool, workers - 1):  # free threads take slices of a large tensor
                return None, _compress_leaf(path, w, mask(path, w), rc, quant_key)

        try:
            with open(parts[0], "wb") as enc_file, open(parts[1], "wb") as raw_file:
                for path, (section, result) in zip(
                    source.paths, _ordered(pool, job, list(source.paths), workers), strict=True
                ):
                    if section is None:
                        encoded[path] = result
                        section = ({"path": path, "kind": "encoded"}, result.to_bytes())
                        kind, out = "encoded", enc_file
                    else:
                        raw[path] = np.broadcast_to(np.zeros((), result.dtype), result.shape)
                        kind, out = "raw", raw_file
                    entry, payload = section
                    out.write(payload)
                    sections[kind].append(
                        {**entry, "length": len(payload), "crc32": zlib.crc32(payload)}
                    )
                    if progress is not None:
                        progress(path)
            meta = recipe_meta(rc, pruned_by="magnitude", layout=source.layout)
            with open(output, "wb") as out:
                out.write(container.header(meta, sections["encoded"] + sections["raw"]))
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
    return CompressedModel(encoded=encoded, raw=raw, meta=meta)


def _ordered(pool, fn: Callable, items: list, window: int) -> Iterator:
    """``fn(item)`` for each item, computed in `pool` at most `window` + 1 at a time, yielded
    in order (memory: a bounded number of tensors in flight)."""
    pending = []
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()
