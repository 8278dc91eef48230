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
