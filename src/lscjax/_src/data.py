"""Fashion-MNIST in IDX format: the full set when installed, else a subset shipped in the package.

Lookup order for `fashion_mnist`: the `path` argument, then ``$LSCJAX_DATA``, then
/usr/share/datasets/fashion-mnist (Debian package ``dataset-fashion-mnist``), then the embedded
subset (6,000 train / 1,000 test images; MIT license, see data_files/LICENSE-fashion-mnist.txt).
A `path` or ``$LSCJAX_DATA`` that lacks the files is an error, never a silent fall back to the
subset.
"""

import gzip
import os
from pathlib import Path

import numpy as np

from lscjax._src.errors import FormatError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_DIR = Path(__file__).parent / "data_files"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX magic: two zero bytes, the type code (0x08 = uint8) and the number of dimensions.
_IDX_UINT8 = 0x08


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing(folder: Path, split: str) -> list[str]:
    return [stem + "[.gz]" for stem in _FILES[split] if _find(folder, stem) is None]


def data_dir(path: str | os.PathLike | None = None, split: str = "train") -> Path:
    """The folder `fashion_mnist` reads `split` from (see the module docstring for the order).

    Raises:
      FileNotFoundError: `path`, or else a non-empty ``$LSCJAX_DATA``, lacks the split's files
        (names the folder, where it came from and the missing files).
    """
    source = "path"
    if path is None and os.environ.get("LSCJAX_DATA"):
        path, source = os.environ["LSCJAX_DATA"], "$LSCJAX_DATA"
    if path is not None:
        missing = _missing(Path(path), split)
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST {split!r} files not found in {path} (from {source}): missing "
                f"{', '.join(missing)}"
            )
        return Path(path)
    return SYSTEM_DIR if not _missing(SYSTEM_DIR, split) else EMBEDDED_DIR


def read_idx(file: Path) -> np.ndarray:
    """Read one IDX file (gzip or raw) of unsigned bytes: uint8 array of the shape in its header.

    Raises:
      FormatError: the header or the length is not that of a uint8 IDX file.
    """
    raw = (gzip.open if file.suffix == ".gz" else open)(file, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UINT8:
        raise FormatError(f"{file}: not a uint8 IDX file (bad magic)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{file}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(raw) != header + int(np.prod(shape)):
        raise FormatError(
            f"{file}: IDX header declares shape {shape} ({int(np.prod(shape))} bytes) "
            f"but the file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist(split: str, *, path: str | os.PathLike | None = None):
    """Load a Fashion-MNIST split.

    Args:
      split: "train" or "test".
      path: a folder holding the IDX files (``*-idx3-ubyte[.gz]``); None searches the default places.

    Returns:
      (images uint8 [N, 28, 28], labels int32 [N]).

    Raises:
      ValueError: unknown split.
      FileNotFoundError: `path` lacks the files (names them).
      FormatError: a file is not a valid IDX file.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_dir(path, split)
    images_stem, labels_stem = _FILES[split]
    images = read_idx(_find(folder, images_stem))
    labels = read_idx(_find(folder, labels_stem)).astype(np.int32)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise FormatError(
            f"{folder}: images {images.shape} and labels {labels.shape} do not form a data set"
        )
    return images, labels
