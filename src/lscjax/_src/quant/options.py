"""Per-leaf settings: an option given once for every layer, or as a {path: value} map."""

from collections.abc import Mapping

import numpy as np

from lscjax._src.errors import LscError


def per_leaf(setting, path: str, what: str):
    """The value of `setting` for the leaf at `path`.

    Args:
      setting: one value for every leaf, or a {path: value} mapping.
      path: the leaf path, e.g. 'Dense_0/kernel'.
      what: the option's name, for error messages.

    Raises:
      LscError: `setting` is a mapping without an entry for `path`.
    """
    if isinstance(setting, Mapping):
        if path not in setting:
            raise LscError(f"leaf {path!r}: no {what} given (the {what} map has {sorted(setting)})")
        return setting[path]
    return setting


def check_count(path: str, k, what: str = "k", most: int = 2**16) -> int:
    """Raise LscError naming `path` unless `k` is an int in [1, most]; return it."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= most:
        raise LscError(f"leaf {path!r}: {what} must be an int in [1, {most}], got {k!r}")
    return int(k)


def check_sub_dim(path: str, leaf, sub_dim) -> int:
    """The leaf's sub-vector length (an int or a {path: d} map), checked to divide its rows.

    Raises:
      LscError: sub_dim < 1, or not dividing the row length ``shape[-1]`` (names `path`).
    """
    d = check_count(path, per_leaf(sub_dim, path, "sub_dim"), "sub_dim", most=2**31)
    n = np.shape(leaf)[-1] if np.ndim(leaf) else 1
    if np.ndim(leaf) == 0 or n % d:
        raise LscError(f"leaf {path!r}: sub_dim {d} does not divide the row length {n}")
    return d


def bits_for(n_codes: int) -> int:
    """Bits per code for `n_codes` codes: ceil(log2(n_codes)), at least 1."""
    return max(1, (n_codes - 1).bit_length())
