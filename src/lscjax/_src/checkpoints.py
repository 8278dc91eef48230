"""Read parameter pytrees from the checkpoint formats users have: npz, safetensors, Flax msgpack, orbax.

Every reader returns nested dicts of NumPy arrays keyed like Flax params ({'Dense_0': {'kernel':
...}}); a top-level 'params' collection is unwrapped. PyTorch / Hugging Face state dicts in
.safetensors or .npz files are converted to Flax's names and orientation, with a per-leaf record
of the conversion (`read_checkpoint`). None of the readers executes code from the file (npz is
read with allow_pickle=False; PyTorch pickles are refused unopened).
"""

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lscjax._src.errors import FormatError, LscError
from lscjax._src.hf_layout import TRANSFORMS, apply_transform, torch_plan
from lscjax._src.tree import leaves_with_paths, nest


def flatten(params) -> dict[str, np.ndarray]:
    """A params pytree -> {'Dense_0/kernel': np.ndarray}."""
    return {path: np.asarray(leaf) for path, leaf in leaves_with_paths(params)}


def _unwrap(tree):
    if isinstance(tree, dict) and set(tree) >= {"params"} and isinstance(tree["params"], dict):
        return tree["params"]
    return tree


def _nest_keys(flat: dict[str, np.ndarray]) -> dict:
    """Flat checkpoint keys -> nested dicts: '/'-separated keys when any key has a '/', else
    '.'-separated (PyTorch / Hugging Face names such as 'encoder.layer.0.output.dense.weight')."""
    return _unwrap(nest(flat, "/" if any("/" in k for k in flat) else "."))


TORCH_PICKLES = (".bin", ".pt", ".pth", ".ckpt")


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


LAYOUTS = ("auto", "flax", "torch")


class Checkpoint(NamedTuple):
    """What `read_checkpoint` returns.

    Attributes:
      params: nested dicts of NumPy arrays in Flax's names and orientation.
      layout: for a PyTorch-layout file, the per-leaf conversion record
        ``{"a/b/kernel": {"source": "a.b.weight", "transform": "transpose", "source_shape":
        [out, in]}}`` (`lscjax._src.hf_layout`); None when the file was already in Flax layout.
    """

    params: dict
    layout: dict | None


def is_torch_layout(flat: Mapping[str, Any]) -> bool:
    """Whether flat checkpoint keys are PyTorch names: dotted (no '/') with 'weight' leaves."""
    return (
        bool(flat)
        and not any("/" in k for k in flat)
        and any(k.rsplit(".", 1)[-1] == "weight" for k in flat)
    )


def torch_layout(specs: Mapping[str, tuple[tuple, Any]]) -> dict:
    """The layout record of a PyTorch state dict, from {dotted name: (shape, dtype)} in its
    order: the floating tensors as `hf_layout.torch_plan` converts them, then the non-floating
    buffers (e.g. position_ids) kept as they are ('identity'), each with its "source_shape".

    Raises:
      LscError: a tensor the conversion has no rule for, or two that give the same leaf.
    """
    floating = {k: v for k, v in specs.items() if np.issubdtype(v[1], np.floating)}
    layout = torch_plan(floating)
    for name, _ in specs.items():
        if name not in floating:
            path = name.replace(".", "/")
            if path in layout:
                raise LscError(
                    f"tensors {layout[path]['source']!r} and {name!r} both give {path!r}"
                )
            layout[path] = {"source": name, "transform": "identity"}
    for entry in layout.values():
        entry["source_shape"] = [int(d) for d in specs[entry["source"]][0]]
    return layout


def _from_torch(flat: dict[str, np.ndarray]) -> Checkpoint:
    """Convert a PyTorch state dict (`torch_layout`)."""
    layout = torch_layout({k: (v.shape, v.dtype) for k, v in flat.items()})
    converted = {
        path: apply_transform(flat[entry["source"]], entry["transform"])
        for path, entry in layout.items()
    }
    return Checkpoint(nest(converted), layout)


def layout_shape(source_shape, transform: str) -> tuple[int, ...]:
    """The Flax shape that `transform` gives a tensor of PyTorch shape `source_shape`.

    Read from `hf_layout.apply_transform` on a tiny array whose axes have distinct lengths, so
    that the axis order has one definition.

    Raises:
      LscError: an unknown transform or a shape of the wrong ndim for it.
    """
    ndim = len(source_shape)
    if transform == "identity":
        return tuple(int(d) for d in source_shape)
    if transform not in TRANSFORMS or not 2 <= ndim <= 5:
        raise LscError(f"transform {transform!r} of a {ndim}-D tensor: expected {TRANSFORMS}")
    probe = apply_transform(np.empty(tuple(range(2, ndim + 2)), np.bool_), transform)
    return tuple(int(source_shape[d - 2]) for d in probe.shape)


def check_layout(layout: Mapping | None, shapes: Mapping[str, tuple]) -> None:
    """Check a layout record against the leaves it describes.

    Args:
      layout: a `Checkpoint.layout` record, or None (nothing to check).
      shapes: {leaf path: dense shape} of the params or compressed model.

    Raises:
      LscError: an entry that is not a {source, transform, source_shape} object, names a leaf
        that does not exist or whose shape is not what its transform gives (a weight that
        would be served in the wrong orientation).
    """
    if layout is None:
        return
    if not isinstance(layout, Mapping):
        raise LscError(f"layout record must be a mapping, got {type(layout).__name__}")
    for path, entry in layout.items():
        if not (
            isinstance(entry, Mapping)
            and isinstance(entry.get("source"), str)
            and entry.get("transform") in TRANSFORMS
            and isinstance(entry.get("source_shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["source_shape"])
        ):
            raise LscError(
                f"layout record of {path!r}: expected {{source, transform in {TRANSFORMS}, "
                f"source_shape}}, got {entry!r}"
            )
        if path not in shapes:
            raise LscError(f"layout record names {path!r}, which is not a leaf")
        expected = layout_shape(entry["source_shape"], entry["transform"])
        if tuple(shapes[path]) != expected:
            raise LscError(
                f"leaf {path!r}: shape {tuple(shapes[path])}, but {entry['source']!r} "
                f"{tuple(entry['source_shape'])} under {entry['transform']!r} gives {expected}"
            )


def _read_flat(path: Path, suffix: str) -> dict[str, np.ndarray]:
    """The {key: array} of an .npz or .safetensors file, keys as the file names them."""
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            with path.open("rb") as f:
                head = f.read(16)
            raise FormatError(
                f"{path}: not an .npz archive (an .npz is a zip file of .npy arrays, as "
                f"numpy.savez writes; this file starts with {head!r})"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise FormatError(f"{path}: not a readable .npz ({err})") from None
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise LscError("reading .safetensors needs: pip install 'lscjax[io]'") from None
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError
        raise FormatError(f"{path}: not a readable .safetensors file ({err})") from None


def _read_tree(path: Path, suffix: str) -> dict:
    """The params of an orbax folder or a Flax msgpack file."""
    if path.is_dir():
        import orbax.checkpoint as ocp

        try:
            restored = ocp.PyTreeCheckpointer().restore(path.resolve())
        except Exception as err:  # orbax raises many types for a foreign folder
            raise FormatError(f"{path}: not an orbax checkpoint ({err})") from None
        return _to_numpy(_unwrap(restored))
    from flax import serialization

    try:
        restored = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several types on bad input
        raise FormatError(f"{path}: not a Flax msgpack checkpoint ({err})") from None
    if not isinstance(restored, dict):
        raise FormatError(f"{path}: the msgpack checkpoint does not hold a dict of params")
    return _to_numpy(_unwrap(restored))


def read_checkpoint(path: str | os.PathLike, *, layout: str = "auto") -> Checkpoint:
    """Load a parameter tree, in Flax's names and orientation, and its layout record.

    Args:
      path: a `.npz` or `.safetensors` file (keys 'Dense_0/kernel', or dotted:
        'Dense_0.kernel'), a Flax msgpack file (`.msgpack`, flax.serialization.to_bytes of a
        params or {'params': ...} tree), or an orbax checkpoint folder.
      layout: "torch": the .npz / .safetensors file is a PyTorch / Hugging Face state dict
        (dotted names, nn.Linear ``weight`` [out, in], nn.Embedding ``weight`` [vocab, dim]),
        converted by `lscjax._src.hf_layout.from_torch` (Linear weights transposed to
        ``kernel`` [in, out], embeddings to ``embedding``, norms to ``scale``/``bias``);
        non-floating buffers are kept as they are. "flax": keys are leaf paths, read as they
        are. "auto" (default): "torch" when every key is dotted (no '/') and some end in
        '.weight', else "flax".

    Returns:
      A `Checkpoint` (params, layout record or None).

    Raises:
      FileNotFoundError: no such file or folder.
      LscError: an unknown file type or `layout`, "torch" for a msgpack/orbax checkpoint, a
        tensor the PyTorch conversion has no rule for, or a PyTorch pickle (.bin, .pt, .pth,
        .ckpt: never opened; use safetensors). FormatError: a file that does not parse.
    """
    if layout not in LAYOUTS:
        raise LscError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    suffix = "" if path.is_dir() else path.suffix.lower()
    if suffix in TORCH_PICKLES:
        raise LscError(
            f"{path}: PyTorch {suffix} checkpoints are pickles, which can run code when read, so "
            "lscjax never opens them. Use the checkpoint's .safetensors file (Hugging Face "
            "repositories ship model.safetensors), or convert it where you trust the file: "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
        )
    if suffix in (".npz", ".safetensors"):
        flat = _read_flat(path, suffix)
        if layout == "torch" or (layout == "auto" and is_torch_layout(flat)):
            return _from_torch(flat)
        return Checkpoint(_nest_keys(flat), None)
    if path.is_dir() or suffix in (".msgpack", ".flax"):
        if layout == "torch":
            raise LscError(
                f"{path}: layout='torch' applies to .safetensors and .npz state dicts, not to "
                "msgpack or orbax checkpoints (already Flax trees)"
            )
        return Checkpoint(_read_tree(path, suffix), None)
    raise LscError(
        f"{path}: unknown checkpoint type {suffix!r}; expected .npz, .safetensors, .msgpack or an orbax folder"
    )


def read_params(path: str | os.PathLike, *, layout: str = "auto") -> dict:
    """The params of `read_checkpoint(path, layout=layout)` (nested dicts of NumPy arrays)."""
    return read_checkpoint(path, layout=layout).params
