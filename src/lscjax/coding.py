"""Storage codecs: dense, bitmask, COO, CSR/CSC, RI, SRI and LSC, with Huffman / rANS stages, and
"trellis" for the codes of `lscjax.quant.rdq(..., grid="trellis")`.

FORMATS: the formats that take any tensor; TRELLIS_FORMAT takes trellis codes only."""

from lscjax._src.coding.codec import decode as decode
from lscjax._src.coding.codec import decode_qarray as decode_qarray
from lscjax._src.coding.codec import encode as encode
from lscjax._src.coding.compare import Comparison as Comparison
from lscjax._src.coding.compare import Row as Row
from lscjax._src.coding.compare import combinatorial_floor as combinatorial_floor
from lscjax._src.coding.compare import compare as compare
from lscjax._src.coding.encoded import Encoded as Encoded
from lscjax._src.coding.entropy import ENTROPIES as ENTROPIES
from lscjax._src.coding.formats import ANY_TENSOR as FORMATS
from lscjax._src.coding.formats import TRELLIS_FORMAT as TRELLIS_FORMAT
from lscjax._src.coding.lsc import decode_block as decode_block
from lscjax._src.coding.lsc import decode_blocks as decode_blocks

__all__ = [
    "ENTROPIES",
    "FORMATS",
    "TRELLIS_FORMAT",
    "Comparison",
    "Encoded",
    "Row",
    "combinatorial_floor",
    "compare",
    "decode",
    "decode_block",
    "decode_blocks",
    "decode_qarray",
    "encode",
]
