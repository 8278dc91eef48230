"""Data sets: Fashion-MNIST (full set when installed, else an embedded subset)."""

from lscjax._src.data import data_dir as data_dir
from lscjax._src.data import fashion_mnist as fashion_mnist

__all__ = ["data_dir", "fashion_mnist"]
