"""optax GradientTransformations for retraining compressed models."""

from lscjax._src.train.centroids import SharedCentroidsState as SharedCentroidsState
from lscjax._src.train.centroids import quantized_params as quantized_params
from lscjax._src.train.centroids import shared_centroids as shared_centroids
from lscjax._src.train.iterative import iterative_prune as iterative_prune
from lscjax._src.train.masking import KeepMasksState as KeepMasksState
from lscjax._src.train.masking import keep_masks as keep_masks

__all__ = [
    "KeepMasksState",
    "iterative_prune",
    "keep_masks",
    "SharedCentroidsState",
    "quantized_params",
    "shared_centroids",
]
from lscjax._src.train.admm import AdmmState as AdmmState
from lscjax._src.train.admm import admm as admm
from lscjax._src.train.admm import admm_masks as admm_masks
from lscjax._src.train.gradual import GradualState as GradualState
from lscjax._src.train.gradual import PolynomialSchedule as PolynomialSchedule
from lscjax._src.train.gradual import gradual as gradual
from lscjax._src.train.gradual import one_shot as one_shot
from lscjax._src.train.gradual import polynomial as polynomial

__all__ += [
    "AdmmState",
    "GradualState",
    "PolynomialSchedule",
    "admm",
    "admm_masks",
    "gradual",
    "one_shot",
    "polynomial",
]
