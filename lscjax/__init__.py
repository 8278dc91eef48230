"""lscjax: model compression for JAX/Flax, from pruning to a small file and back to fast inference."""

from lscjax import coding as coding
from lscjax import data as data
from lscjax import flax as flax
from lscjax import models as models
from lscjax import prune as prune
from lscjax import quant as quant
from lscjax import sparse as sparse
from lscjax import train as train
from lscjax._src.errors import FormatError as FormatError
from lscjax._src.errors import LscError as LscError

__version__ = "0.1.0"

__all__ = [
    "FormatError",
    "LscError",
    "coding",
    "data",
    "flax",
    "models",
    "prune",
    "quant",
    "sparse",
    "train",
]
