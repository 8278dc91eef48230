"""Pruning: scores -> bool masks (True = kept), and their application."""

from lscjax._src.prune.magnitude import apply as apply
from lscjax._src.prune.magnitude import count_params as count_params
from lscjax._src.prune.magnitude import magnitude as magnitude
from lscjax._src.prune.magnitude import sparsity as sparsity
from lscjax._src.prune.magnitude import std_threshold as std_threshold

__all__ = ["apply", "count_params", "magnitude", "sparsity", "std_threshold"]
