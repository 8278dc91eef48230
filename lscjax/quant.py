"""Quantization: weights as integer codes into float32 codebooks (`QArray`)."""

from lscjax._src.quant.qarray import QArray as QArray
from lscjax._src.quant.qarray import dequantize as dequantize
from lscjax._src.quant.qarray import is_qarray as is_qarray
from lscjax._src.quant.qarray import storage_bits as storage_bits

__all__ = ["QArray", "dequantize", "is_qarray", "storage_bits"]
