"""One parameter leaf (a float kernel or a `QArray`) in the form it is served from: block-sparse
when that is faster than dense, else dense (dequantized once).

Nothing here knows a model framework: the Linen and NNX integrations and
`CompressedModel.block_sparse_params` call these functions with leaf paths for their errors.
"""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.kernels import cpu
from lscjax._src.quant.qarray import QArray, is_qarray
from lscjax._src.sparse.block_sparse import BlockSparse
from lscjax._src.sparse.multi_axis import MultiAxisKernel, is_block_sparse, matrix_split
from lscjax._src.sparse.stack import stack
from lscjax._src.tree import check_float_leaf, leaves_with_paths

# Largest fraction of non-zero blocks at which a kernel is served block-sparse by default; denser
# kernels are served dense (a QArray dequantized once). From `benchmarks/serve_density.py` on CPU,
# for transformer-sized kernels (384..3072 wide, 128 and 1024 rows of x, b=32, random block
# positions, float values and 4-bit codes; docs/results/serving.md): with the compiled CPU kernel
# the median ratio block-sparse / dense is 0.36 at 10% of the blocks, 0.65 at 50%, 0.80 at 70% and
# 1.08 at 100%; the XLA path (an installation without the kernel) is 0.7 at 10% and above 1.3
# from 30% on. Not measured on GPU / TPU.
DEFAULT_MAX_DENSITY = 0.7 if cpu.available() else 0.1
TABLE = "embedding"  # leaves of this name are embedding tables (Flax's Embed), looked up by row
InAxes = None | Mapping[str, int] | Callable[[str, object], int | None]


def check_max_density(max_density: float) -> None:
    """Raise LscError unless `max_density` (the conversions' bound on a kernel's fraction of
    non-zero blocks) is in [0, 1]."""
    if not 0.0 <= max_density <= 1.0:
        raise LscError(f"max_density must be in [0, 1], got {max_density!r}")


def _layers(leaf) -> list:
    """The per-layer kernels of a stacked kernel [L, ...] (float array or QArray).

    A QArray with one code per weight and one codebook (k-means, per-layer binarize) is sliced
    into QArrays sharing that codebook; other QArrays are dequantized first.
    """
    if not is_qarray(leaf):
        return list(leaf)
    if leaf.method in ("kmeans", "binarize") and leaf.codebook.ndim == 1:
        return [
            QArray(codes, leaf.codebook, leaf.method, leaf.bits, leaf.shape[1:])
            for codes in leaf.codes
        ]
    return list(leaf.dequantize())


def _as_matrix(leaf, in_ndim: int):
    """A kernel (array or QArray) reshaped to its matrix view [K, N] (`matrix_split`)."""
    shape = matrix_split(tuple(leaf.shape), in_ndim)
    if not is_qarray(leaf):
        return jnp.reshape(leaf, shape)
    if leaf.method in ("kmeans", "binarize") and leaf.codebook.ndim == 1:
        return QArray(leaf.codes.reshape(shape), leaf.codebook, leaf.method, leaf.bits, shape)
    return leaf.dequantize().reshape(shape)


def block_sparse_leaf(
    path: str, leaf, block, *, stacked: bool = False, in_ndim: int | None = None
) -> BlockSparse | MultiAxisKernel:
    """One kernel (float array or QArray) as a BlockSparse; errors name the leaf `path`.

    Args:
      path: the leaf path, named in errors.
      leaf: float kernel ``[*shape]`` (or ``[L, *shape]`` with `stacked`) or QArray.
      block: b or (b_in, b_out).
      stacked: the leaf is L layers' kernels [L, ...]: each is converted and the L BlockSparse
        are stacked (`lscjax.sparse.stack`).
      in_ndim: how many leading axes of a layer's kernel the layer contracts; None or
        ``ndim - 1``: a plain BlockSparse (its view [prod(shape[:-1]), shape[-1]]), else a
        `MultiAxisKernel` around the BlockSparse of the [K, N] matrix view.

    Raises:
      LscError: a leaf that is not a float array or a consistent QArray, NaN/Inf, a bad
        `block`, an `in_ndim` outside [1, ndim - 1] (the message names `path`).
    """
    shape = tuple(leaf.shape)[1:] if stacked else tuple(leaf.shape)
    if in_ndim is not None and in_ndim != len(shape) - 1:
        if not 1 <= in_ndim < len(shape):
            raise LscError(
                f"leaf {path!r}: in_ndim={in_ndim!r} does not split a kernel of shape {shape} "
                "into input and output axes"
            )
        layers = _layers(leaf) if stacked else [leaf]
        matrices = [_as_matrix(one, in_ndim) for one in layers]
        parts = [block_sparse_leaf(path, m, block) for m in matrices]
        return MultiAxisKernel(stack(parts) if stacked else parts[0], shape, in_ndim)
    if stacked:
        layers = _layers(leaf)
        return stack(
            [block_sparse_leaf(f"{path}[{i}]", one, block) for i, one in enumerate(layers)]
        )
    try:
        if is_qarray(leaf):
            return BlockSparse.from_qarray(leaf, block, path=path)
        check_float_leaf(path, leaf)
        return BlockSparse.from_dense(leaf, block)
    except LscError as err:
        raise LscError(f"leaf {path!r}: {err}") from err


def dense_leaf(leaf) -> jax.Array:
    """A kernel as the dense array it is served from: a QArray dequantized (once)."""
    return leaf.dequantize() if is_qarray(leaf) else jnp.asarray(leaf)


def served_leaf(
    path: str,
    leaf,
    block,
    *,
    max_density: float,
    stacked: bool = False,
    in_ndim: int | None = None,
):
    """`leaf` as served: its `block_sparse_leaf` when at most `max_density` of its blocks are
    non-zero, else `dense_leaf` (a nearly dense kernel multiplies faster dense).

    Raises:
      LscError: as `block_sparse_leaf`.
    """
    w = block_sparse_leaf(path, leaf, block, stacked=stacked, in_ndim=in_ndim)
    return w if w.block_density <= max_density else dense_leaf(leaf)


def bias_in_ndim(kernel_shape: tuple, bias_shape: tuple | None) -> int | None:
    """The contracted axes of a kernel read from its layer's bias, or None when unknown.

    A Dense / DenseGeneral / Einsum bias has the kernel's output axes (``features``), so the
    kernel contracts its first ``ndim - bias.ndim`` axes: 1 for the attention query / key /
    value [in, heads, head_dim] with bias [heads, head_dim]. Without a bias (or a bias whose
    shape is not the kernel's trailing axes) this returns None: the kernel's view is then
    ``shape[:-1]`` by ``shape[-1]`` unless the conversion is told otherwise (``in_axes=``).
    """
    if bias_shape is None or not 1 <= len(bias_shape) < len(kernel_shape):
        return None
    if tuple(kernel_shape[len(kernel_shape) - len(bias_shape) :]) != tuple(bias_shape):
        return None
    return len(kernel_shape) - len(bias_shape)


def leaf_in_ndim(path: str, leaves: Mapping, in_axes: InAxes, stacked: bool) -> int | None:
    """The contracted axes of the kernel at `path`: from `in_axes` when it says, else from the
    rank of the layer's bias (the leaf 'bias' beside it, `bias_in_ndim`), else None.

    Args:
      path: the kernel's leaf path, e.g. 'attention/query/kernel'.
      leaves: {path: leaf} of the params (anything with a ``shape``), the kernel's included.
      in_axes: ``{path: n}``, ``(path, leaf) -> n | None``, or None.
      stacked: whether the leaves stack layers on a leading axis (not counted).
    """
    leaf = leaves[path]
    given = in_axes.get(path) if isinstance(in_axes, Mapping) else None
    if callable(in_axes):
        given = in_axes(path, leaf)
    if given is not None:
        return int(given)
    bias = leaves.get(path.rsplit("/", 1)[0] + "/bias" if "/" in path else "bias")
    cut = 1 if stacked else 0
    bias_shape = None if bias is None else tuple(bias.shape)[cut:]
    return bias_in_ndim(tuple(leaf.shape)[cut:], bias_shape)


def _block_density(w, block) -> float:
    """Fraction of the b_in x b_out blocks of a dense kernel's matrix view holding a non-zero."""
    bi, bo = block
    m = np.asarray(w).reshape(-1, np.shape(w)[-1]) != 0
    k, n = m.shape
    padded = np.zeros((-(-k // bi) * bi, -(-n // bo) * bo), bool)
    padded[:k, :n] = m
    blocks = padded.reshape(padded.shape[0] // bi, bi, padded.shape[1] // bo, bo).any(axis=(1, 3))
    return float(blocks.mean())


def serving_table(params, *, max_density: float = DEFAULT_MAX_DENSITY, block=32) -> list[dict]:
    """How each kernel and embedding table of served params is served, and why.

    Args:
      params: served params (from `lscjax.flax.to_block_sparse` or
        ``lscjax.load(..., layout="block_sparse")``).
      max_density: the bound the params were converted with (named in the reasons).
      block: b or (b_in, b_out), the block at which a dense kernel's density is counted.

    Returns:
      One dict per leaf named 'kernel' or 'embedding', in flattening order: ``path``,
      ``shape``, ``served`` ("block-sparse float", "block-sparse 4-bit codes", "codes lookup",
      "dense", ...), ``density`` (fraction of non-zero blocks) and ``why``.
    """
    check_max_density(max_density)
    block = (block, block) if isinstance(block, int) else tuple(block)
    rows = []
    for path, leaf in leaves_with_paths(params, lambda x: is_block_sparse(x) or is_qarray(x)):
        name = path.rsplit("/", 1)[-1]
        if name not in ("kernel", TABLE) or len(leaf.shape) < 2:
            continue
        shape = tuple(leaf.shape)
        if is_block_sparse(leaf):
            codes = "float" if leaf.bits is None else f"{leaf.bits}-bit codes"
            density = leaf.block_density
            served, why = f"block-sparse {codes}", f"block density {density:.2f} <= {max_density}"
        elif is_qarray(leaf):
            density = None
            served, why = f"codes lookup ({leaf.method}, {leaf.bits}-bit)", "embedding table"
        else:
            density = _block_density(leaf, block)
            served = "dense"
            why = (
                "embedding table (float)"
                if name == TABLE
                else f"block density {density:.2f} > {max_density}: faster dense"
                if density > max_density
                else "left dense by the selection"
            )
        rows.append(dict(path=path, shape=shape, served=served, density=density, why=why))
    return rows


def format_serving_table(rows: list[dict]) -> str:
    """`serving_table` rows as aligned text lines (path, shape, served as, why)."""
    cells = [(r["path"], "x".join(map(str, r["shape"])), r["served"], r["why"]) for r in rows]
    widths = [max([len(c[i]) for c in cells] + [len(h)]) for i, h in enumerate(_HEADER)]
    lines = [_HEADER, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


_HEADER = ("layer", "shape", "served as", "why")
