"""The sparsity patterns of the calibrated pruning methods: unstructured, "n:m" or (b0, b1) blocks."""

from typing import NamedTuple

from lscjax._src.errors import LscError


class Pattern(NamedTuple):
    """A parsed pattern. kind: "unstructured" | "nm" | "block"; n, m for "nm"; b0 (input
    features) x b1 (outputs) for "block", tiles of the matrix view kernel.reshape(-1, out)."""

    kind: str
    n: int = 0
    m: int = 0
    b0: int = 0
    b1: int = 0


def parse_pattern(pattern) -> Pattern:
    """None (unstructured), "n:m" (n kept of every m consecutive input features, e.g. "2:4") or a
    pair (b0, b1) of block sides (whole b0 x b1 tiles, aligned with the BlockSparse layout).

    Raises:
      LscError: anything else.
    """
    if pattern is None:
        return Pattern("unstructured")
    if isinstance(pattern, str):
        parts = pattern.split(":")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            n, m = int(parts[0]), int(parts[1])
            if 1 <= n <= m:
                return Pattern("nm", n=n, m=m)
    elif (
        isinstance(pattern, tuple)
        and len(pattern) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in pattern)
    ):
        return Pattern("block", b0=pattern[0], b1=pattern[1])
    raise LscError(
        f"pattern must be None, 'n:m' with 1 <= n <= m (e.g. '2:4') or a pair of block sides "
        f"(b0, b1), got {pattern!r}"
    )


def check_fits(path: str, pattern: Pattern, d: int) -> None:
    """Raise LscError naming `path` if an n:m pattern's m does not divide the d input features."""
    if pattern.kind == "nm" and d % pattern.m:
        raise LscError(f"leaf {path!r}: {d} input features are not a multiple of m={pattern.m}")
