"""`compare`: every storage format side by side on one tensor, next to the combinatorial floor."""

import dataclasses
import math

import numpy as np

from lscjax._src.coding.codec import encode
from lscjax._src.coding.entropy import ENTROPIES
from lscjax._src.coding.formats import ANY_TENSOR
from lscjax._src.coding.values import bit_view

DENSE_BITS = 32


def combinatorial_floor(size: int, nonzeros: int) -> float:
    """log2 C(n, k) / k: bits per non-zero to name a uniformly random set of k among n (0 if k=0)."""
    if nonzeros == 0:
        return 0.0
    log_choose = (
        math.lgamma(size + 1) - math.lgamma(nonzeros + 1) - math.lgamma(size - nonzeros + 1)
    )
    return log_choose / math.log(2) / nonzeros


@dataclasses.dataclass(frozen=True)
class Row:
    """One format's cost on the tensor.

    Attributes:
      format, entropy: what was encoded; options: the resolved options (k, block, ...).
      index_bits, value_bits: the Encoded's accounting.
      total_bits: 8 * len(to_bytes()), everything including the fixed header.
      index_per_nonzero, value_per_nonzero: the accounting divided by the non-zeros.
      ratio: 32 * size / total_bits, against dense float32.
    """

    format: str
    entropy: str
    options: dict
    index_bits: int
    value_bits: int
    total_bits: int
    index_per_nonzero: float
    value_per_nonzero: float
    ratio: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The table `compare` returns; `str()` prints it as markdown.

    Attributes:
      rows: one Row per (format, entropy).
      size: elements n; nonzeros: k.
      floor: log2 C(n, k) / k, index bits per non-zero of the combinatorial floor.
    """

    rows: tuple
    size: int
    nonzeros: int
    floor: float

    def __str__(self) -> str:
        lines = [
            "| format | entropy | index bits / nz | value bits / nz | total bits | ratio vs f32 |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row.format} | {row.entropy} | {row.index_per_nonzero:.2f} | "
                f"{row.value_per_nonzero:.2f} | {row.total_bits} | {row.ratio:.2f}x |"
            )
        lines.append(f"| floor log2 C(n,k)/k | | {self.floor:.2f} | | | |")
        return "\n".join(lines)


def compare(array, *, formats=ANY_TENSOR, entropies=ENTROPIES) -> Comparison:
    """Encode `array` in every format and entropy stage and tabulate the costs.

    Args:
      array: any array or QArray that `encode` accepts.
      formats: the formats to include (default: all that take any tensor).
      entropies: the entropy stages to include (default: all).

    Returns:
      A `Comparison`; ``print(compare(w))`` shows the markdown table.
    """
    encodings = [encode(array, f, entropy=e) for f in formats for e in entropies]
    size = math.prod(encodings[0].shape)
    nonzeros = int(np.count_nonzero(bit_view(np.asarray(getattr(array, "codes", array)))))
    per = max(nonzeros, 1)
    rows = []
    for enc in encodings:
        total = 8 * len(enc.to_bytes())
        rows.append(
            Row(
                enc.format,
                enc.entropy,
                {k: v for k, v in enc.options.items() if k != "entropy"},
                enc.index_bits,
                enc.value_bits,
                total,
                enc.index_bits / per,
                enc.value_bits / per,
                DENSE_BITS * size / total,
            )
        )
    return Comparison(tuple(rows), size, nonzeros, combinatorial_floor(size, nonzeros))
