"""The .lsc file container: magic, version, a JSON header, and one CRC32-checked section per tensor.

Layout (all integers little-endian; docs/format.md, "Container"):

    offset  size  field
    0       8     magic b"\\x89LSCJAX\\n"
    8       2     version (uint16) = 1
    10      2     flags (uint16) = 0
    12      4     header length H (uint32)
    16      4     CRC32 of the header bytes (uint32)
    20      H     header: UTF-8 JSON object {"meta": {...}, "sections": [...]}
    20+H    ...   sections, back to back, in header order

Each header section entry is {"path": str, "kind": str, "length": int, "crc32": int, ...} plus
kind-specific fields; the sections' lengths add up to exactly the rest of the file. Reading
checks every length against the file size before slicing or allocating, and every CRC before
parsing a section: anything else raises FormatError saying what is wrong. Nothing in a file is
ever executed or unpickled.
"""

import json
import os
import struct
import zlib
from collections.abc import Iterator

from lscjax._src.coding.validate import check_int
from lscjax._src.errors import FormatError

MAGIC = b"\x89LSCJAX\n"
VERSION = 1
_PREFIX = struct.Struct("<8sHHII")
PREFIX_BYTES = _PREFIX.size
MAX_HEADER_BYTES = 1 << 24  # 16 MiB of JSON is far beyond any model's header


def pack(meta: dict, sections: list[tuple[dict, bytes]]) -> bytes:
    """Serialize a container.

    Args:
      meta: JSON-serializable model-level facts (recipe, accounting, ...).
      sections: (entry, payload) pairs; entry is a JSON-serializable dict with at least "path"
        and "kind"; "length" and "crc32" are filled in here.

    Returns:
      The file's bytes.
    """
    entries = [
        {**entry, "length": len(payload), "crc32": zlib.crc32(payload)}
        for entry, payload in sections
    ]
    return b"".join([header(meta, entries)] + [payload for _, payload in sections])


def header(meta: dict, entries: list[dict]) -> bytes:
    """The bytes before the sections (prefix and JSON header), for entries that already carry
    their "length" and "crc32": the sections' payloads follow them, in order."""
    text = json.dumps({"meta": meta, "sections": entries}, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, VERSION, 0, len(text), zlib.crc32(text)) + text


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(message)


def _check_entry(i: int, entry) -> None:
    _require(isinstance(entry, dict), f"section {i}: expected a JSON object")
    for field in ("path", "kind"):
        _require(
            isinstance(entry.get(field), str), f"section {i}: field {field!r} missing or not a str"
        )
    check_int(entry.get("length"), f"section {i} ({entry['path']!r}) length")
    check_int(entry.get("crc32"), f"section {i} ({entry['path']!r}) crc32", 0, 2**32 - 1)


def _parse_header(read, size: int) -> tuple[dict, list[dict], int]:
    """(meta, section entries, offset of the first section) of a container of `size` bytes,
    every field and length checked; ``read(offset, n)`` gives n bytes of it."""
    _require(size >= PREFIX_BYTES, f"file too short for an lscjax container ({size} bytes)")
    magic, version, flags, header_len, header_crc = _PREFIX.unpack(read(0, PREFIX_BYTES))
    _require(magic == MAGIC, "not an lscjax file (bad magic)")
    _require(
        version == VERSION, f"unknown container version {version} (this lscjax reads {VERSION})"
    )
    _require(flags == 0, f"unknown container flags {flags:#06x}")
    _require(
        header_len <= min(size - PREFIX_BYTES, MAX_HEADER_BYTES),
        f"header declares {header_len} bytes but the file has {size - PREFIX_BYTES} after the prefix",
    )
    header_bytes = read(PREFIX_BYTES, header_len)
    _require(zlib.crc32(header_bytes) == header_crc, "header CRC32 mismatch (corrupted file)")
    try:
        header = json.loads(bytes(header_bytes).decode("utf-8"))
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, an int past 4300 digits
        raise FormatError(f"header is not valid JSON: {err}") from None
    _require(
        isinstance(header, dict)
        and isinstance(header.get("meta"), dict)
        and isinstance(header.get("sections"), list),
        "header must be an object with 'meta' (object) and 'sections' (list)",
    )
    for i, entry in enumerate(header["sections"]):
        _check_entry(i, entry)
    body = size - PREFIX_BYTES - header_len
    declared = sum(entry["length"] for entry in header["sections"])
    _require(
        declared == body,
        f"sections declare {declared} bytes but the file holds {body} after the header",
    )
    return header["meta"], header["sections"], PREFIX_BYTES + header_len


def _checked(entry: dict, payload):
    _require(
        zlib.crc32(payload) == entry["crc32"],
        f"section {entry['path']!r}: CRC32 mismatch (corrupted file)",
    )
    return payload


def unpack(data: bytes) -> tuple[dict, list[tuple[dict, memoryview]]]:
    """Parse and verify a container.

    Args:
      data: the whole file.

    Returns:
      (meta, [(entry, payload), ...]) with every payload's length and CRC32 verified.

    Raises:
      FormatError: not an lscjax file, unknown version, truncated, corrupted (CRC mismatch),
        lengths that do not add up to the file size, or a malformed header.
    """
    view = memoryview(data)
    meta, entries, offset = _parse_header(lambda at, n: view[at : at + n], len(data))
    out = []
    for entry in entries:
        out.append((entry, _checked(entry, view[offset : offset + entry["length"]])))
        offset += entry["length"]
    return meta, out


def read_sections(path) -> tuple[dict, list[dict], Iterator[bytes]]:
    """A container file read one section at a time (the file is never held whole).

    Args:
      path: the .lsc file.

    Returns:
      (meta, section entries, the payloads): the header is checked as `unpack` checks it
      before this returns; each payload is read and its CRC32 verified as the iterator reaches
      it (the file stays open until the iterator is exhausted or closed).

    Raises:
      FormatError: as `unpack` (a CRC mismatch when the iterator reaches that section).
    """
    f = open(path, "rb")  # noqa: SIM115 -- closed by `payloads`
    try:
        size = os.fstat(f.fileno()).st_size

        def read(at: int, n: int) -> bytes:
            f.seek(at)
            data = f.read(n)
            _require(len(data) == n, f"file ends at {at + len(data)} of {size} bytes")
            return data

        meta, entries, offset = _parse_header(read, size)
    except BaseException:
        f.close()
        raise

    def payloads() -> Iterator[bytes]:
        with f:
            f.seek(offset)
            for entry in entries:
                yield _checked(entry, read(f.tell(), entry["length"]))

    return meta, entries, payloads()
