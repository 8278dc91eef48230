"""The reading budget: how many bytes the arrays declared by untrusted bytes may take.

A file or blob declares sizes (shapes, entry counts, stream lengths) before the data that fills
them. Every reader charges what such a declaration would make it allocate to one `Budget`
*before* allocating it, and before handing a count to the entropy coder (constriction is Rust: an
allocation it cannot make aborts the process). A declaration past the budget raises FormatError.

What is charged: the decoded arrays (elements x item size), the dequantized weights of a load,
the raw leaves, and ENTRY_BYTES per decoded index entry or symbol (the working arrays of the
decoders). Work proportional to the input's own size (reading its bits, parsing its JSON header)
comes on top: at most WORK_PER_INPUT_BYTE bytes per input byte.

The default budget is DEFAULT_EXPANSION times the input size, and at least DEFAULT_FLOOR; a
larger one is an explicit opt-in (``max_bytes=`` of `lscjax.load`, `Encoded.from_bytes`,
`lscjax.coding.decode`).
"""

from lscjax._src.errors import FormatError, LscError

DEFAULT_EXPANSION = 1024
DEFAULT_FLOOR = 256 * 2**20
ENTRY_BYTES = 48
"""Bytes charged per decoded index entry or symbol: the int64 symbol, step, position and owner
arrays the decoders build from one entry, and the entropy coder's own output."""
WORK_PER_INPUT_BYTE = 128
"""Bound on the uncharged working memory per input byte (bit unpacking, JSON parsing)."""


def default_max_bytes(input_bytes: int) -> int:
    """The default budget for an input of `input_bytes` bytes."""
    return max(DEFAULT_EXPANSION * input_bytes, DEFAULT_FLOOR)


def check_max_bytes(max_bytes) -> None:
    """TypeError / LscError unless `max_bytes` is None or an int >= 0."""
    if max_bytes is None:
        return
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int or None, got {type(max_bytes).__name__}")
    if max_bytes < 0:
        raise LscError(f"max_bytes must be >= 0, got {max_bytes}")


class Budget:
    """Bytes a read may still allocate; `charge` before every declared allocation.

    Attributes:
      max_bytes: the budget this read started with.
      left: what is left of it.
    """

    def __init__(self, max_bytes: int):
        check_max_bytes(max_bytes)
        self.max_bytes = max_bytes
        self.left = max_bytes

    @classmethod
    def of(cls, input_bytes: int, max_bytes: int | None = None) -> "Budget":
        """The budget for reading `input_bytes` bytes: `max_bytes`, or the default."""
        check_max_bytes(max_bytes)
        return cls(default_max_bytes(input_bytes) if max_bytes is None else max_bytes)

    def charge(self, nbytes: int, what: str) -> None:
        """Take `nbytes` (an exact Python int: declared sizes never overflow here) for `what`.

        Raises:
          FormatError: more than what is left.
        """
        if nbytes > self.left:
            raise FormatError(
                f"{what} would take {nbytes} bytes, past the reading budget of {self.max_bytes} "
                f"bytes ({self.left} left); pass a larger max_bytes= to read it"
            )
        self.left -= nbytes

    def entries(self, count: int, what: str) -> None:
        """Charge the working arrays of `count` decoded entries or symbols."""
        self.charge(ENTRY_BYTES * count, what)
