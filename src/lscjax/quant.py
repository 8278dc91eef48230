"""Quantization: weights as integer codes into float32 codebooks (`QArray`).

Deep Compression's trained k-means weight sharing and Gong et al.'s binarization, product and
residual quantization; GPTQ's error-compensated quantization from calibration
statistics; `rdq`, entropy-constrained quantization minimising distortion + lam x rate, and
`rdq_for_target`, its lam for a size or quality target; `centroid_grads` for fine-tuning the
shared values.
"""

from lscjax._src.quant.binarize import binarize as binarize
from lscjax._src.quant.gptq import gptq as gptq
from lscjax._src.quant.grads import centroid_grads as centroid_grads
from lscjax._src.quant.kmeans import kmeans as kmeans
from lscjax._src.quant.product import product as product
from lscjax._src.quant.qarray import QArray as QArray
from lscjax._src.quant.qarray import dequantize as dequantize
from lscjax._src.quant.qarray import is_qarray as is_qarray
from lscjax._src.quant.qarray import storage_bits as storage_bits
from lscjax._src.quant.rdq import rdq as rdq
from lscjax._src.quant.residual import residual as residual
from lscjax._src.rdq_target import rdq_for_target as rdq_for_target

__all__ = [
    "QArray",
    "binarize",
    "centroid_grads",
    "dequantize",
    "gptq",
    "is_qarray",
    "kmeans",
    "product",
    "rdq",
    "rdq_for_target",
    "residual",
    "storage_bits",
]
