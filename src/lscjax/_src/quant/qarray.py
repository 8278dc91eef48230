"""`QArray`: a quantized weight held as integer codes plus a float32 codebook.

The layout of `codes` and `codebook` depends on the method (the team-wide convention):

* ``"kmeans"`` and ``"binarize"`` (scalar methods): ``codes`` has the weight's shape and the dense
  weight is ``codebook[codes]`` with ``codebook`` float32 [K], K <= 2**bits. For ``"kmeans"``,
  whenever the layer has pruned zeros, code 0 is reserved for exactly 0.0 (``codebook[0] == 0.0``):
  an integer code array is then sparse exactly where the weight is. A ``"kmeans"`` QArray may
  also hold one codebook per output channel (the last axis, n = ``shape[-1]``): ``codebook``
  float32 [n, K] and the dense weight is ``codebook[c, codes[..., c]]``; or one per group of G
  consecutive row blocks and channel, ``codebook`` float32 [G, n, K] over the 2-D view [m, n]
  (G divides m; row r uses group ``r // (m // G)``): the per-channel (grouped) uniform grids of
  GPTQ, stored as their grid values. ``"binarize"`` with a per-row
  scale uses ``codebook`` float32 [rows, 2] and the dense weight is ``codebook[row, codes]``.
* ``"product"``: the weight's 2-D view [m, n] (rows = all leading axes, ``n = shape[-1]``) is cut
  into s segments of ``sub_dim = n // s`` columns; ``codes`` is [m, s] and ``codebook`` float32
  [s, K, sub_dim] (one codebook per segment).
* ``"residual"``: ``codes`` is [stages, *shape], ``codebook`` float32 [stages, K]; the dense
  weight is the sum over stages of ``codebook[t, codes[t]]``. In the vector form, each row of
  the 2-D view [m, n] is cut into sub-vectors of ``sub_dim`` columns: ``codes`` is
  [stages, m, n // sub_dim] and ``codebook`` float32 [stages, K, sub_dim], one codebook per stage
  shared by all sub-vectors.

Storage is accounted as the codecs account it: every code costs ``bits`` bits and every codebook
entry 32 bits of metadata.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.tree import path_str

METHODS = ("kmeans", "binarize", "product", "residual")
CODEBOOK_ENTRY_BITS = 32


def code_dtype(n_codes: int):
    """The narrowest unsigned dtype for codes in [0, n_codes): uint8 up to 256, else uint16."""
    return jnp.uint8 if n_codes <= 256 else jnp.uint16


def check_bits(path: str, bits) -> int:
    """Raise LscError naming `path` unless `bits` is an int in [1, 16]; return it."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 16:
        raise LscError(f"leaf {path!r}: bits must be an int in [1, 16], got {bits!r}")
    return int(bits)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QArray:
    """A quantized weight: integer codes into a float32 codebook (see the module docstring).

    Attributes:
      codes: uint8 (<= 256 codes) or uint16 array; the weight's shape for scalar methods,
        [m, s] for "product", ``[stages, *shape]`` for "residual" ([stages, m, s] for its vectors).
      codebook: float32; [K] (or [n, K] / [G, n, K] per channel for "kmeans", [rows, 2] for
        per-row "binarize"), [s, K, sub_dim] for
        "product", [stages, K] for "residual" ([stages, K, sub_dim] for its vectors).
      method: static; "kmeans" | "binarize" | "product" | "residual".
      bits: static; bits per code, in [1, 16].
      shape: static; the dense weight's shape.
    """

    codes: jax.Array
    codebook: jax.Array
    method: str = dataclasses.field(metadata=dict(static=True))
    bits: int = dataclasses.field(metadata=dict(static=True))
    shape: tuple = dataclasses.field(metadata=dict(static=True))

    def dequantize(self) -> jax.Array:
        """The dense weight, float32 of shape `shape`.

        Raises:
          LscError: concrete codes at or past the codebook size (traced codes are not checked).
        """
        if not isinstance(self.codes, jax.core.Tracer):
            check_codes("QArray", self.codes, self.method, tuple(self.codebook.shape))
        codes = jnp.asarray(self.codes).astype(jnp.int32)
        if self.method == "kmeans" and self.codebook.ndim > 1:  # per-channel [(G,) n, K]
            groups, n, k = (
                (1, *self.codebook.shape) if self.codebook.ndim == 2 else self.codebook.shape
            )
            view = codes.reshape(groups, -1, n)
            base = (jnp.arange(groups)[:, None, None] * n + jnp.arange(n)[None, None, :]) * k
            return self.codebook.reshape(-1)[base + view].reshape(self.shape)
        if self.method == "product":
            segments = jnp.arange(self.codebook.shape[0])
            rows = self.codebook[segments, codes]  # [m, s, sub_dim]
            return rows.reshape(self.shape)
        if self.method == "residual" and self.codebook.ndim == 3:  # [stages, k, sub_dim]
            stages = jnp.arange(self.codebook.shape[0])[:, None, None]
            return self.codebook[stages, codes].sum(axis=0).reshape(self.shape)
        if self.method == "residual":
            stages = jnp.arange(self.codebook.shape[0]).reshape((-1,) + (1,) * len(self.shape))
            return self.codebook[stages, codes].sum(axis=0)
        if self.codebook.ndim == 2:  # per-row binarize: codebook [rows, 2]
            rows = jnp.arange(self.codebook.shape[0]).reshape((-1, 1))
            return self.codebook[rows, codes.reshape(rows.shape[0], -1)].reshape(self.shape)
        return self.codebook[codes]

    @property
    def code_bits(self) -> int:
        """Bits of the codes stored densely: ``codes.size * bits``."""
        return int(np.prod(self.codes.shape)) * self.bits

    @property
    def codebook_bits(self) -> int:
        """Bits of the codebook, stored as metadata: 32 per entry."""
        return int(np.prod(self.codebook.shape)) * CODEBOOK_ENTRY_BITS

    @property
    def storage_bits(self) -> int:
        """``code_bits + codebook_bits``: the dense (unpruned) storage of this QArray."""
        return self.code_bits + self.codebook_bits


def is_qarray(x) -> bool:
    """True for a `QArray` (use as ``is_leaf=`` when mapping over trees holding QArrays)."""
    return isinstance(x, QArray)


def _expected_shapes(q: QArray) -> tuple[tuple, tuple]:
    """(codes shape, codebook shape) that `q`'s method requires for its dense shape, taking the
    number of codes, segments and stages from the codebook (-1 where its rank is already wrong)."""
    shape = tuple(q.shape)
    rows = int(np.prod(shape[:-1]))
    cb = tuple(q.codebook.shape)
    if q.method == "product":
        s, k = cb[:2] if len(cb) == 3 else (-1, -1)
        divides = len(shape) >= 1 and s > 0 and shape[-1] % s == 0
        return (rows, s), (s, k, shape[-1] // s if divides else -1)
    if q.method == "residual" and len(cb) == 3:  # vectors of sub_dim = cb[2]
        stages, k, d = cb
        divides = len(shape) >= 1 and d > 0 and shape[-1] % d == 0
        return (stages, rows, shape[-1] // d if divides else -1), (stages, k, d)
    if q.method == "residual":
        stages, k = cb if len(cb) == 2 else (-1, -1)
        return (stages, *shape), (stages, k)
    if q.method == "binarize" and len(cb) == 2:
        return shape, (rows, 2)
    n = shape[-1] if shape else -1
    if q.method == "kmeans" and len(cb) == 2:
        return shape, (n, cb[1])
    if q.method == "kmeans" and len(cb) == 3:
        groups = cb[0] if cb[0] > 0 and rows % cb[0] == 0 else -1
        return shape, (groups, n, cb[2])
    return shape, (cb[0] if len(cb) == 1 else -1,)


def n_codes(method: str, codebook_shape: tuple) -> int:
    """Entries per codebook (codes index [0, n_codes)) for a `method` codebook of that shape."""
    return codebook_shape[1] if method in ("product", "residual") else codebook_shape[-1]


def check_codes(path: str, codes, method: str, codebook_shape: tuple, error=LscError) -> None:
    """Raise `error` naming `path` unless every code (int array) is below `n_codes`."""
    codes = np.asarray(codes)
    limit = n_codes(method, codebook_shape)
    if codes.size and int(codes.max()) >= limit:
        raise error(f"leaf {path!r}: code {int(codes.max())} past the {limit} codebook entries")


def check_qarray(path: str, q: QArray, shape: tuple | None = None) -> None:
    """Raise LscError naming `path` if `q` is inconsistent (or its dense shape is not `shape`).

    Checks the method, the bits, the codes' integer dtype and layout and the codebook's float32
    dtype, layout and size (at most 2**bits entries per codebook). Only static facts are checked,
    so this works on traced QArrays too.
    """
    if q.method not in METHODS:
        raise LscError(f"leaf {path!r}: unknown QArray method {q.method!r}, expected {METHODS}")
    check_bits(path, q.bits)
    if shape is not None and tuple(shape) != tuple(q.shape):
        raise LscError(f"leaf {path!r}: QArray of shape {tuple(q.shape)}, expected {tuple(shape)}")
    if q.codes.dtype not in (jnp.uint8, jnp.uint16):
        raise LscError(f"leaf {path!r}: QArray codes must be uint8 or uint16, got {q.codes.dtype}")
    if q.codebook.dtype != jnp.float32:
        raise LscError(f"leaf {path!r}: QArray codebook must be float32, got {q.codebook.dtype}")
    codes_shape, codebook_shape = _expected_shapes(q)
    if tuple(q.codebook.shape) != codebook_shape:
        raise LscError(
            f"leaf {path!r}: {q.method} QArray of shape {tuple(q.shape)} has a codebook of shape "
            f"{tuple(q.codebook.shape)}, expected {codebook_shape}"
        )
    if tuple(q.codes.shape) != codes_shape:
        raise LscError(
            f"leaf {path!r}: {q.method} QArray of shape {tuple(q.shape)} has codes of shape "
            f"{tuple(q.codes.shape)}, expected {codes_shape}"
        )
    entries = n_codes(q.method, codebook_shape)
    if entries > 2**q.bits:
        raise LscError(f"leaf {path!r}: {entries} codebook entries exceed 2**bits = {2**q.bits}")


def dequantize(tree):
    """Replace every `QArray` leaf of `tree` by its dense float32 weight; other leaves unchanged.

    Raises:
      LscError: an inconsistent QArray, or concrete codes at or past its codebook size (names
        the leaf path).
    """

    def one(kp, leaf):
        if not is_qarray(leaf):
            return leaf
        path = path_str(kp)
        check_qarray(path, leaf)
        if not isinstance(leaf.codes, jax.core.Tracer):
            check_codes(path, leaf.codes, leaf.method, tuple(leaf.codebook.shape))
        return leaf.dequantize()

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=is_qarray)


def storage_bits(tree) -> dict[str, int]:
    """{path: storage bits (codes + codebook)} of every QArray leaf of `tree`."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_qarray)[0]
    return {path_str(kp): leaf.storage_bits for kp, leaf in flat if is_qarray(leaf)}
