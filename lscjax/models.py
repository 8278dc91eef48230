"""The LeNets of the compression literature (Flax Linen) and a small train / eval loop."""

from lscjax._src.loop import accuracy as accuracy
from lscjax._src.loop import classifier_loss as classifier_loss
from lscjax._src.loop import cross_entropy as cross_entropy
from lscjax._src.loop import fit as fit
from lscjax._src.models import LeNet5 as LeNet5
from lscjax._src.models import LeNet300 as LeNet300
from lscjax._src.models import init as init
from lscjax._src.models import prepare as prepare

__all__ = [
    "LeNet5",
    "LeNet300",
    "accuracy",
    "classifier_loss",
    "cross_entropy",
    "fit",
    "init",
    "prepare",
]
