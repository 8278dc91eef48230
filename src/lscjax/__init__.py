"""lscjax: model compression for JAX/Flax, from pruning to a small file and back to fast inference."""

from lscjax import coding as coding
from lscjax import data as data
from lscjax import flax as flax
from lscjax import models as models
from lscjax import prune as prune
from lscjax import quant as quant
from lscjax import sparse as sparse
from lscjax import train as train
from lscjax._src.checkpoints import Checkpoint as Checkpoint
from lscjax._src.checkpoints import read_checkpoint as read_checkpoint
from lscjax._src.checkpoints import read_params as read_params
from lscjax._src.compress import Recipe as Recipe
from lscjax._src.compress import Retrain as Retrain
from lscjax._src.compress import Rule as Rule
from lscjax._src.compress import compress as compress
from lscjax._src.compress import recipe as recipe
from lscjax._src.compressed import CompressedModel as CompressedModel
from lscjax._src.compressed import load as load
from lscjax._src.compressed import save as save
from lscjax._src.distill import distillation as distillation
from lscjax._src.errors import FormatError as FormatError
from lscjax._src.errors import LscError as LscError
from lscjax._src.flax.calibration import Calibration as Calibration

__version__ = "0.1.0"

__all__ = [
    "Calibration",
    "Checkpoint",
    "CompressedModel",
    "FormatError",
    "LscError",
    "Recipe",
    "Retrain",
    "Rule",
    "compress",
    "distillation",
    "load",
    "read_checkpoint",
    "read_params",
    "recipe",
    "save",
    "coding",
    "data",
    "flax",
    "models",
    "prune",
    "quant",
    "sparse",
    "train",
]
