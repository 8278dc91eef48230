"""The registry of storage formats: name -> (writer, reader, the options the writer accepts).

A writer is ``write(w, bits, shape, values, entropy, **options) -> resolved options`` with `bits`
the flat unsigned bit patterns [n]; a reader is ``read(r, shape, n, values, dtype, entropy) ->
(positions int64 [m] or None for all n, values [m], resolved options)``.
"""

import functools
from typing import NamedTuple

from lscjax._src.coding import bitmask, coo, csr, dense, lsc, ri, sri, trellis


class Format(NamedTuple):
    """One storage format."""

    write: object
    read: object
    options: frozenset


FORMATS = {
    "dense": Format(dense.write, dense.read, frozenset()),
    "bitmask": Format(bitmask.write, bitmask.read, frozenset()),
    "coo": Format(coo.write, coo.read, frozenset()),
    "csr": Format(
        functools.partial(csr.write, columns_first=False),
        functools.partial(csr.read, columns_first=False),
        frozenset({"index_width"}),
    ),
    "csc": Format(
        functools.partial(csr.write, columns_first=True),
        functools.partial(csr.read, columns_first=True),
        frozenset({"index_width"}),
    ),
    "ri": Format(ri.write, ri.read, frozenset({"k"})),
    "sri": Format(sri.write, sri.read, frozenset({"k"})),
    "lsc": Format(lsc.write, lsc.read, frozenset({"block", "k"})),
    "trellis": Format(trellis.write, trellis.read, frozenset()),
}
NAMES = tuple(FORMATS)
"""Every format, in the order of their ids."""
TRELLIS_FORMAT = "trellis"
"""The format of trellis-quantized codes only (`quant.rdq(..., grid="trellis")`)."""
ANY_TENSOR = tuple(name for name in NAMES if name != TRELLIS_FORMAT)
"""The formats that take any tensor ("trellis" takes only the codes of trellis quantization)."""
