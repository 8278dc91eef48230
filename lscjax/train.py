"""optax GradientTransformations for retraining compressed models."""

from lscjax._src.train.masking import KeepMasksState as KeepMasksState
from lscjax._src.train.masking import keep_masks as keep_masks

__all__ = ["KeepMasksState", "keep_masks"]
