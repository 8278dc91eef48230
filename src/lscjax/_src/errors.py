"""The one exception hierarchy of lscjax.

Every error lscjax raises for bad input is an `LscError`. It subclasses ValueError, so
callers that already catch ValueError for bad configuration keep working.
"""


class LscError(ValueError):
    """Bad input or configuration given to an lscjax transform."""


class FormatError(LscError):
    """Bytes that are not a valid lscjax encoding: truncated, corrupted, foreign or unknown version."""
