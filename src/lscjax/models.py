"""Models: the LeNets of the compression literature and a BERT encoder read from Hugging Face
(Flax Linen), and a small train / eval loop."""

from lscjax._src.bert import Bert as Bert
from lscjax._src.bert import BertConfig as BertConfig
from lscjax._src.bert import bert_from_hf as bert_from_hf
from lscjax._src.bert import sentence_embedding as sentence_embedding
from lscjax._src.bert import tokenize as tokenize
from lscjax._src.loop import accuracy as accuracy
from lscjax._src.loop import classifier_loss as classifier_loss
from lscjax._src.loop import cross_entropy as cross_entropy
from lscjax._src.loop import fit as fit
from lscjax._src.models import LeNet5 as LeNet5
from lscjax._src.models import LeNet300 as LeNet300
from lscjax._src.models import init as init
from lscjax._src.models import prepare as prepare

__all__ = [
    "Bert",
    "BertConfig",
    "LeNet5",
    "LeNet300",
    "accuracy",
    "bert_from_hf",
    "classifier_loss",
    "cross_entropy",
    "fit",
    "init",
    "prepare",
    "sentence_embedding",
    "tokenize",
]
