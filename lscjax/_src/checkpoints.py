"""Read parameter pytrees from the checkpoint formats users have: npz, safetensors, Flax msgpack, orbax.

Every reader returns nested dicts of NumPy arrays keyed like Flax params ({'Dense_0': {'kernel':
...}}); a top-level 'params' collection is unwrapped. None of them executes code from the file
(npz is read with allow_pickle=False).
"""

import os
import zipfile
from pathlib import Path

import numpy as np

from lscjax._src.errors import FormatError, LscError
from lscjax._src.tree import leaves_with_paths, nest


def flatten(params) -> dict[str, np.ndarray]:
    """A params pytree -> {'Dense_0/kernel': np.ndarray}."""
    return {path: np.asarray(leaf) for path, leaf in leaves_with_paths(params)}


def _unwrap(tree):
    if isinstance(tree, dict) and set(tree) >= {"params"} and isinstance(tree["params"], dict):
        return tree["params"]
    return tree


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def read_params(path: str | os.PathLike) -> dict:
    """Load a parameter tree from a checkpoint file or folder.

    Args:
      path: a `.npz` (keys 'Dense_0/kernel'), `.safetensors` (keys with '/' or '.'), Flax msgpack
        (`.msgpack`, flax.serialization.to_bytes of a params or {'params': ...} tree) file, or an
        orbax checkpoint folder.

    Returns:
      Nested dicts of NumPy arrays.

    Raises:
      FileNotFoundError: no such file or folder.
      LscError: an unknown file type. FormatError: a file that does not parse.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        import orbax.checkpoint as ocp

        try:
            restored = ocp.PyTreeCheckpointer().restore(path.resolve())
        except Exception as err:  # orbax raises many types for a foreign folder
            raise FormatError(f"{path}: not an orbax checkpoint ({err})") from None
        return _to_numpy(_unwrap(restored))
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return _unwrap(nest({k: npz[k] for k in npz.files}))
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise FormatError(f"{path}: not a readable .npz ({err})") from None
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise LscError("reading .safetensors needs: pip install 'lscjax[io]'") from None
        try:
            flat = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError
            raise FormatError(f"{path}: not a readable .safetensors file ({err})") from None
        sep = "/" if any("/" in k for k in flat) else "."
        return _unwrap(nest(flat, sep))
    if suffix in (".msgpack", ".flax"):
        from flax import serialization

        try:
            restored = serialization.msgpack_restore(path.read_bytes())
        except Exception as err:  # msgpack raises several types on bad input
            raise FormatError(f"{path}: not a Flax msgpack checkpoint ({err})") from None
        if not isinstance(restored, dict):
            raise FormatError(f"{path}: the msgpack checkpoint does not hold a dict of params")
        return _to_numpy(_unwrap(restored))
    raise LscError(
        f"{path}: unknown checkpoint type {suffix!r}; expected .npz, .safetensors, .msgpack or an orbax folder"
    )
