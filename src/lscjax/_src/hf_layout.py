"""PyTorch / Hugging Face state dicts as Flax parameter trees, with a record of every conversion.

A PyTorch state dict names tensors by dotted module paths (``encoder.layer.0.attention.self.
query.weight``) and stores them in PyTorch's orientation. `from_torch` turns it into nested dicts
keyed like Flax params (``{'encoder': {'layer': {'0': ...}}}``) in Flax's orientation, and returns
beside it a layout record saying, for each leaf, which tensor it came from and what was done to
it, so that the orientation of every weight is known and stored, never guessed again later.

The rules, by the last name of the tensor and its number of dimensions (no other rule applies; a
tensor no rule covers is an error, never a guess):

====================  =====  =====================  ============================================
torch name            ndim   Flax name              transform
====================  =====  =====================  ============================================
``weight``            2      ``embedding``          ``identity``: its module matches `embeddings`
                                                    (nn.Embedding [vocab, dim])
``weight``            2      ``kernel``             ``transpose``: nn.Linear [out, in] -> [in, out]
``weight``            3-5    ``kernel``             ``conv_to_hwio``: nn.ConvNd [out, in, *window]
                                                    -> [*window, in, out]
``weight``/``gamma``  1      ``scale``              ``identity`` (LayerNorm / norm scale)
``bias``/``beta``     1      ``bias``               ``identity``
====================  =====  =====================  ============================================

What the rules cannot see: a 2-D ``weight`` outside the `embeddings` modules is read as an
nn.Linear [out, in] (GPT-2's Conv1D stores [in, out]: name such modules in `skip` and convert them
yourself), and a 3-5-D ``weight`` as nn.ConvNd (nn.ConvTranspose stores [in, out, *window]).
Non-floating tensors (e.g. the int64 ``position_ids`` buffer) and other names
(``running_mean``, ``num_batches_tracked``, ...) must be named in `skip`.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lscjax._src.errors import LscError

#: The layout record: {Flax leaf path ('a/b/kernel'): {"source": torch name, "transform": name}}.
Layout = dict[str, dict[str, str]]

TRANSFORMS = ("identity", "transpose", "conv_to_hwio")

NameTest = str | Callable[[str], bool] | None

#: The default `embeddings` test: the module's last name ends in 'embedding(s)' or is 'embed_tokens'
#: (BERT's word/position/token_type_embeddings, LLaMA's embed_tokens; not ALBERT's
#: embedding_hidden_mapping_in, which is an nn.Linear).
EMBEDDINGS = r"(embeddings?|embed_tokens)$"


def _matcher(test: NameTest, what: str) -> Callable[[str], bool]:
    """A regex (searched, case-insensitive) or a callable as a predicate on names."""
    if test is None:
        return lambda name: False
    if isinstance(test, str):
        pattern = re.compile(test, re.IGNORECASE)
        return lambda name: pattern.search(name) is not None
    if callable(test):
        return lambda name: bool(test(name))
    raise LscError(
        f"{what}: expected a regex string, a callable or None, got {type(test).__name__}"
    )


def _rule(name: str, module: str, leaf: str, ndim: int, is_embedding) -> tuple[str, str]:
    """(Flax leaf name, transform) of one tensor, or LscError naming it."""
    if leaf == "weight" and ndim == 2:
        return ("embedding", "identity") if is_embedding(module) else ("kernel", "transpose")
    if leaf == "weight" and 3 <= ndim <= 5:
        return "kernel", "conv_to_hwio"
    if leaf in ("weight", "gamma") and ndim == 1:
        return "scale", "identity"
    if leaf in ("bias", "beta") and ndim == 1:
        return "bias", "identity"
    raise LscError(
        f"tensor {name!r} (ndim {ndim}): no conversion rule for a {leaf!r} of {ndim} dimensions; "
        "expected weight (1-5-D), bias/gamma/beta (1-D); name it in skip= to leave it out"
    )


def apply_transform(array: np.ndarray, transform: str) -> np.ndarray:
    """One layout transform applied to a PyTorch-oriented array.

    Args:
      array: the tensor as PyTorch stores it, any dtype: [out, in] for ``transpose``,
        [out, in, *window] (1-3 window axes) for ``conv_to_hwio``.
      transform: one of ``identity``, ``transpose``, ``conv_to_hwio``.

    Returns:
      The array in Flax's orientation (a C-contiguous copy unless ``identity``): [in, out] for
      ``transpose``, [*window, in, out] for ``conv_to_hwio``.

    Raises:
      LscError: an unknown transform, or an array of the wrong ndim for it.
    """
    array = np.asarray(array)
    if transform == "identity":
        return array
    if transform == "transpose" and array.ndim == 2:
        return np.ascontiguousarray(array.T)
    if transform == "conv_to_hwio" and 3 <= array.ndim <= 5:
        return np.ascontiguousarray(np.transpose(array, (*range(2, array.ndim), 1, 0)))
    raise LscError(
        f"transform {transform!r} of an array of shape {array.shape}: expected one of "
        f"{TRANSFORMS} (transpose: 2-D, conv_to_hwio: 3-5-D)"
    )


def from_torch(
    state_dict: Mapping[str, Any],
    *,
    embeddings: NameTest = EMBEDDINGS,
    skip: NameTest = None,
) -> tuple[dict, Layout]:
    """Convert a PyTorch / Hugging Face state dict into a Flax parameter tree and its layout record.

    Args:
      state_dict: {dotted torch name: array} (NumPy or anything `np.asarray` takes, e.g. what
        ``safetensors.numpy.load_file`` returns). Names split on '.' into the tree's keys.
      embeddings: which modules hold nn.Embedding tables: a regex searched (case-insensitive) in
        the dotted module name (the tensor name without its last part), or a callable
        ``(module_name) -> bool``. The default `EMBEDDINGS` matches module names ending in
        ``embedding``/``embeddings`` or ``embed_tokens``. Only 2-D ``weight`` tensors are
        affected; None reads every 2-D weight as nn.Linear.
      skip: tensors to leave out: a regex searched (case-insensitive) in the full dotted name, or
        a callable ``(name) -> bool``; None keeps every tensor.

    Returns:
      (tree, layout): `tree` is nested dicts of NumPy arrays keyed by the parts of the names, the
      last part renamed and the array re-oriented by the rules of the module docstring (dtypes
      kept); `layout` is ``{"a/b/kernel": {"source": "a.b.weight", "transform": "transpose"}}``
      for every leaf of `tree`, in the state dict's order.

    Raises:
      LscError: a tensor no rule covers (naming it), a non-floating tensor not skipped, two
        tensors that convert to the same leaf, an empty result, or a bad `embeddings`/`skip`.

    Example:
      >>> import numpy as np
      >>> w = np.arange(6.0, dtype=np.float32).reshape(2, 3)  # nn.Linear(3, 2).weight
      >>> tree, layout = from_torch({"fc.weight": w})
      >>> tree["fc"]["kernel"].shape, layout["fc/kernel"]["transform"]
      ((3, 2), 'transpose')
    """
    from lscjax._src.tree import nest

    arrays = {name: np.asarray(value) for name, value in state_dict.items()}
    specs = {name: (array.shape, array.dtype) for name, array in arrays.items()}
    layout = torch_plan(specs, embeddings=embeddings, skip=skip)
    flat = {
        path: apply_transform(arrays[entry["source"]], entry["transform"])
        for path, entry in layout.items()
    }
    return nest(flat), layout


def torch_plan(
    specs: Mapping[str, tuple[tuple, Any]],
    *,
    embeddings: NameTest = EMBEDDINGS,
    skip: NameTest = None,
) -> Layout:
    """The layout record `from_torch` gives a state dict, from its tensors' shapes and dtypes
    alone (nothing is read or converted).

    Args:
      specs: {dotted torch name: (shape, dtype)} in the state dict's order.
      embeddings, skip: as in `from_torch`.

    Returns:
      ``{"a/b/kernel": {"source": "a.b.weight", "transform": "transpose"}}`` for every tensor
      `skip` keeps, in the order of `specs`.

    Raises:
      LscError: as `from_torch`.
    """
    is_embedding = _matcher(embeddings, "embeddings")
    is_skipped = _matcher(skip, "skip")
    layout: Layout = {}
    for name, (shape, dtype) in specs.items():
        if is_skipped(name):
            continue
        if not np.issubdtype(dtype, np.floating):
            raise LscError(
                f"tensor {name!r}: dtype {dtype} is not floating point (a buffer?); "
                "name it in skip= to leave it out"
            )
        parts = name.split(".")
        if len(parts) < 2 or "" in parts or any("/" in part for part in parts):
            raise LscError(
                f"tensor {name!r}: expected a dotted name 'module.weight' or 'module.bias'"
            )
        leaf, transform = _rule(name, ".".join(parts[:-1]), parts[-1], len(shape), is_embedding)
        path = "/".join([*parts[:-1], leaf])
        if path in layout:
            raise LscError(
                f"tensors {layout[path]['source']!r} and {name!r} both convert to {path!r}"
            )
        layout[path] = {"source": name, "transform": transform}
    if not layout:
        raise LscError(
            f"no tensor converted: the state dict has {len(specs)} tensors and skip= left out all of them"
        )
    return layout
