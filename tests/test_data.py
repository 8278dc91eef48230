"""Fashion-MNIST loader: IDX parsing, lookup order, clear errors."""

import gzip

import numpy as np
import pytest

import lscjax
from lscjax import FormatError
from lscjax._src import data as data_module


def write_idx(path, array, *, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_split(folder, n, *, gz=True, prefix="t10k"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_from_path(tmp_path, gz):
    images, labels = make_split(tmp_path, 7, gz=gz)
    x, y = lscjax.data.fashion_mnist("test", path=tmp_path)
    assert x.dtype == np.uint8 and x.shape == (7, 28, 28) and y.dtype == np.int32
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_path_without_files_names_what_is_missing(tmp_path):
    make_split(tmp_path, 3)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        lscjax.data.fashion_mnist("test", path=tmp_path)


def test_env_var_then_embedded_fallback(tmp_path, monkeypatch):
    make_split(tmp_path, 5)
    monkeypatch.setenv("LSCJAX_DATA", str(tmp_path))
    assert lscjax.data.fashion_mnist("test")[0].shape == (5, 28, 28)
    monkeypatch.delenv("LSCJAX_DATA")
    monkeypatch.setattr(data_module, "SYSTEM_DIR", tmp_path / "absent")
    assert lscjax.data.data_dir(split="train") == data_module.EMBEDDED_DIR
    x_train, y_train = lscjax.data.fashion_mnist("train")
    x_test, y_test = lscjax.data.fashion_mnist("test")
    assert len(x_train) >= 5000 and len(x_test) >= 1000
    assert set(np.unique(y_train)) == set(range(10))
    assert (data_module.EMBEDDED_DIR / "LICENSE-fashion-mnist.txt").is_file()


def test_truncated_idx_raises_format_error(tmp_path):
    images, _ = make_split(tmp_path, 4, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(FormatError, match="declares shape"):
        lscjax.data.fashion_mnist("test", path=tmp_path)
    f.write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    with pytest.raises(FormatError, match="magic"):
        lscjax.data.fashion_mnist("test", path=tmp_path)


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        lscjax.data.fashion_mnist("validation")


def test_env_var_without_the_files_is_an_error(tmp_path, monkeypatch):
    """A set $LSCJAX_DATA that holds no Fashion-MNIST is refused, not replaced by the subset."""
    monkeypatch.setenv("LSCJAX_DATA", str(tmp_path / "bad" / "path"))
    with pytest.raises(FileNotFoundError, match=r"\$LSCJAX_DATA.*train-images-idx3-ubyte"):
        lscjax.data.fashion_mnist("train")
    make_split(tmp_path, 4)  # test files only: the train split is still missing
    monkeypatch.setenv("LSCJAX_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        lscjax.data.data_dir(split="train")
    assert lscjax.data.fashion_mnist("test")[0].shape == (4, 28, 28)
    monkeypatch.setenv("LSCJAX_DATA", "")  # set but empty: as if unset
    assert lscjax.data.data_dir(split="train") in (data_module.SYSTEM_DIR, data_module.EMBEDDED_DIR)
