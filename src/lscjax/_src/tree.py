"""Leaf paths and the `where=` selection shared by every lscjax transform.

A leaf path is shown to users as the '/'-joined keys of the leaf, e.g. 'Dense_0/kernel' for
``params['Dense_0']['kernel']``. A selection (`where=`) is either

* None: the default, leaves named ``kernel`` with ``ndim >= 2`` (Dense and Conv kernels);
* a callable ``(path: str, leaf) -> bool``;
* a pytree with the structure of the params whose leaves are bools (None counts as False).

Transforms produce trees with the structure of the params in which unselected leaves are None
(e.g. masks); `map_selected` builds them.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import FormatError, LscError
from lscjax._src.parallel import row_spans, shared_map

Where = None | Callable[[str, Any], bool] | Any


def key_name(key) -> str:
    """One pytree key as text: DictKey 'a' -> 'a', GetAttrKey .a -> 'a', SequenceKey [0] -> '0'."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(keypath) -> str:
    """A jax key path as the user-facing leaf path, e.g. 'Dense_0/kernel'."""
    return "/".join(key_name(k) for k in keypath)


def _is_none(x) -> bool:
    return x is None


def leaves_with_paths(tree, is_leaf: Callable | None = None) -> list[tuple[str, Any]]:
    """All non-None leaves of `tree` with their paths, in flattening order.

    `is_leaf` marks further nodes as leaves (e.g. `is_qarray` to keep QArrays whole).
    """
    stop = _is_none if is_leaf is None else (lambda x: x is None or is_leaf(x))
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=stop)
    return [(path_str(kp), leaf) for kp, leaf in flat if leaf is not None]


def default_where(path: str, leaf) -> bool:
    """The default selection: leaves named 'kernel' with ndim >= 2."""
    return path.rsplit("/", 1)[-1] == "kernel" and np.ndim(leaf) >= 2


def shape_proxy(shape: tuple) -> np.ndarray:
    """A zero-cost float32 array of `shape` (a broadcast scalar): what `where=` callables see for
    a leaf that is not an array yet (a QArray, an encoded leaf)."""
    return np.broadcast_to(np.float32(0), shape)


SHOWN_PATHS = 5  # leaf names listed by the empty-selection error


def _check_not_empty(chosen: dict[str, bool], items: list[tuple[str, Any]], where: Where) -> None:
    """Raise LscError when a tree with leaves has none selected, listing a few of them."""
    if not items or any(chosen.values()):
        return
    seen = ", ".join(f"{path!r} {list(np.shape(leaf))}" for path, leaf in items[:SHOWN_PATHS])
    more = f" and {len(items) - SHOWN_PATHS} more" if len(items) > SHOWN_PATHS else ""
    which = (
        "the default selection (leaves named 'kernel' with ndim >= 2)"
        if where is None
        else "where="
    )
    raise LscError(
        f"{which} selects none of the {len(items)} leaves: {seen}{more}. Select leaves with "
        "where= (a callable (path, leaf) -> bool or a bool pytree; on the command line: "
        "--where REGEX)"
    )


def selection(tree, where: Where = None, *, allow_empty: bool = False) -> dict[str, bool]:
    """Which leaves of `tree` `where` selects, as {path: bool} in flattening order.

    Args:
      tree: a pytree.
      where: the selection (see module docstring).
      allow_empty: return an all-False selection instead of raising (for optional selections
        such as ``stacked=``). A tree without leaves never raises.

    Raises:
      LscError: `where` is a pytree that does not match `tree`, or has a non-bool leaf; `where`
        selects none of the leaves of `tree` (the message lists a few leaf paths and shapes).
    """
    items = leaves_with_paths(tree)
    if where is None or callable(where):
        fn = default_where if where is None else where
        chosen = {path: bool(fn(path, leaf)) for path, leaf in items}
        if not allow_empty:
            _check_not_empty(chosen, items, where)
        return chosen
    picked = check_matching(tree, where, "where= pytree")
    out = {}
    for path, _ in items:
        w = picked.get(path)
        if w is None:
            out[path] = False
        elif isinstance(w, bool | np.bool_):
            out[path] = bool(w)
        else:
            raise LscError(f"where= leaf {path!r}: expected a bool or None, got {type(w).__name__}")
    if not allow_empty:
        _check_not_empty(out, items, where)
    return out


def check_matching(tree, other, name: str) -> dict:
    """{path: leaf} of `other` (None leaves included), after checking that `other` has a leaf
    (possibly None) at every leaf path of `tree` and no array leaf at a path `tree` lacks.

    Raises:
      LscError: naming `name` and the missing and unknown paths.
    """
    flat = jax.tree_util.tree_flatten_with_path(other, is_leaf=_is_none)[0]
    picked = {path_str(kp): leaf for kp, leaf in flat}
    paths = {path for path, _ in leaves_with_paths(tree)}
    missing = sorted(paths - set(picked))
    extra = sorted(p for p, leaf in picked.items() if leaf is not None and p not in paths)
    if missing or extra:
        raise LscError(
            f"{name} does not match the params: missing {missing[:5]}, unknown {extra[:5]}"
        )
    return picked


def map_selected(
    fn: Callable, tree, *rest, where: Where = None, fill=None, allow_empty: bool = False
):
    """Apply ``fn(path, leaf, *rest_leaves)`` to the selected leaves of `tree`.

    Args:
      fn: called once per selected leaf with its path, the leaf and the matching leaves of `rest`.
      tree: the pytree that `where` selects from (usually params).
      *rest: pytrees with the structure of `tree` (None leaves allowed).
      where: the selection (see module docstring).
      fill: ``None`` puts None at unselected leaves; ``"keep"`` keeps the leaf of `tree`.
      allow_empty: see `selection`.

    Returns:
      A pytree with the structure of `tree`.

    Raises:
      LscError: see `selection`.
    """
    chosen = selection(tree, where, allow_empty=allow_empty)

    def visit(kp, leaf, *others):
        if leaf is None:
            return None
        path = path_str(kp)
        if chosen.get(path, False):
            return fn(path, leaf, *others)
        return leaf if fill == "keep" else None

    return jax.tree_util.tree_map_with_path(visit, tree, *rest, is_leaf=_is_none)


def selected_leaves(
    tree, where: Where = None, *, allow_empty: bool = False
) -> list[tuple[str, Any]]:
    """The selected (path, leaf) pairs of `tree`, in flattening order.

    Raises:
      LscError: see `selection`.
    """
    chosen = selection(tree, where, allow_empty=allow_empty)
    return [(path, leaf) for path, leaf in leaves_with_paths(tree) if chosen[path]]


def check_float_leaf(path: str, leaf, *, finite: bool = True) -> None:
    """Raise LscError naming `path` if `leaf` is not a floating array, or (when concrete) has NaN/Inf.

    Finiteness is only checked on concrete arrays: under jax.jit a traced leaf cannot be inspected.
    """
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise LscError(f"leaf {path!r}: expected a floating-point array, got dtype {dtype}")
    if finite and not isinstance(leaf, jax.core.Tracer):
        flat = np.asarray(leaf).reshape(-1)
        finite_parts = shared_map(
            lambda span: bool(np.isfinite(np.asarray(flat[span], np.float32)).all()),
            row_spans(flat.size, 1),
        )
        if not all(finite_parts):
            raise LscError(f"leaf {path!r}: contains NaN or Inf")


def nest(flat: dict[str, np.ndarray], sep: str = "/") -> dict:
    """{'a/b': x} -> {'a': {'b': x}}.

    Raises:
      FormatError: a key is both a leaf and a prefix of another key.
    """
    tree: dict = {}
    for key, value in flat.items():
        parts = key.split(sep)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FormatError(f"key {key!r}: {part!r} is both a tensor and a group")
        if parts[-1] in node:
            raise FormatError(f"key {key!r}: duplicate or conflicting entry")
        node[parts[-1]] = value
    return tree
