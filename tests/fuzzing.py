"""Structure-aware fuzzing of the readers: encoded blobs of every format and entropy stage, and
.lsc files, mutated field by field and run in a child process under memory and time limits.

Mutations know the layout: a blob's fields are found by tracing a parse of the valid seed (every
Elias-gamma integer, fixed-width field and packed array the reader takes, with its bit span), and
one field is rewritten with an edge value (0, 1, off by one, 2^31, 2^40, ...), re-encoded at its
own length so the rest of the stream stays aligned. Files are edited in their JSON header
(shapes, dtypes, kinds, paths, lengths, huge integers) or get a mutated blob as a section, and
their lengths and CRC32s are recomputed so the checks behind the CRCs run. A few mutations are
plain bit flips, truncations and extensions.

Each case runs in a worker process (``python tests/fuzzing.py --worker``) with an address-space
limit (RLIMIT_AS) set after its imports, tracemalloc measuring its peak allocation, and a
wall-clock limit per case enforced by the parent. A case is a finding when the worker dies (an
abort or a segfault), takes longer than the time limit, allocates past the reading budget, raises
anything but FormatError, or accepts data that differs from what its header declares. Findings
come back with their reproducer bytes.
"""

import dataclasses
import json
import os
import re
import resource
import select
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 2**30
"""Address space the worker may add after its imports (RLIMIT_AS)."""
TIME_LIMIT = 2.0
SLACK_BYTES = 4 * 2**20
"""Allocation allowed past the budget and the input-proportional work (interpreter noise)."""
EDGE_VALUES = (0, 1, 2, 3, 7, 8, 15, 16, 17, 63, 64, 65, 255, 256, 2**16, 2**31 - 1, 2**31)
EDGE_VALUES += (2**32, 2**40, 2**62)
HUGE = "huge-integer-of-digits:"
"""A meta value replaced by an integer of that many digits in the header text (Python's own int
parser refuses more than 4300)."""


def budget_for(data: bytes) -> int:
    """The fuzzing budget: much tighter than the default, so that bombs show."""
    return 64 * len(data) + 2**20


# -- seeds ------------------------------------------------------------------------------------


def seed_blobs() -> dict[str, bytes]:
    """{name: bytes}: float32 and QArray codes in every format x entropy stage."""
    from lscjax import coding
    from lscjax.quant import QArray

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((12, 10)) < 0.2, rng.normal(size=(12, 10)), 0).astype(np.float32)
    codes = np.where(rng.random((12, 10)) < 0.3, rng.integers(1, 4, (12, 10)), 0).astype(np.uint8)
    q = QArray(codes, np.float32([0.0, -1.0, 0.5, 2.0]), "kmeans", 2, (12, 10))
    out = {}
    for fmt in coding.FORMATS:
        for entropy in coding.ENTROPIES:
            options = {"block": 4} if fmt == "lsc" else {}
            out[f"{fmt}/{entropy}/f32"] = coding.encode(
                dense, fmt, entropy=entropy, **options
            ).to_bytes()
            out[f"{fmt}/{entropy}/qarray"] = coding.encode(
                q, fmt, entropy=entropy, **options
            ).to_bytes()
    return out


def seed_files(blobs: dict[str, bytes]) -> dict[str, bytes]:
    """{name: .lsc bytes}: containers of encoded sections (one per format) and raw leaves."""
    from lscjax._src import container
    from lscjax._src.compressed import raw_section

    files = {}
    for entropy in ("none", "huffman", "ans"):
        sections = [
            ({"path": f"{fmt}/kernel", "kind": "encoded"}, blobs[f"{fmt}/{entropy}/qarray"])
            for fmt in ("lsc", "csr", "dense")
        ]
        sections.append(raw_section("lsc/bias", np.arange(10, dtype=np.float32)))
        sections.append(raw_section("norm/scale", np.ones((2, 3), np.float16)))
        files[f"file/{entropy}"] = container.pack({"recipe": {"name": "lsc"}}, sections)
    return files


# -- blob fields ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One field a parse read: its bit span in the body, how it is coded, its value(s)."""

    start: int
    end: int
    op: str  # "gamma" | "uint" | "uints"
    width: int
    count: int


def trace_fields(blob: bytes) -> list[Field]:
    """The fields a successful parse of `blob` reads, in order (bit offsets after the header)."""
    from lscjax._src.coding import bitstream, encoded

    fields = []

    class Recording(bitstream.BitReader):
        def gamma(self, what, kind=bitstream.INDEX, limit=2**62):
            start = self.pos
            x = super().gamma(what, kind, limit)
            fields.append(Field(start, self.pos, "gamma", 0, 1))
            return x

        def uint(self, width, what, kind=bitstream.INDEX):
            start = self.pos
            x = super().uint(width, what, kind)
            if width:
                fields.append(Field(start, self.pos, "uint", width, 1))
            return x

        def uints(self, count, width, what, kind=bitstream.INDEX):
            start = self.pos
            x = super().uints(count, width, what, kind)
            if count * width:
                fields.append(Field(start, self.pos, "uints", width, count))
            return x

    original = encoded.BitReader
    encoded.BitReader = Recording
    try:
        encoded.Encoded.from_bytes(blob)
    finally:
        encoded.BitReader = original
    # gamma's inner uint reads are parts of the gamma field: keep the outermost spans only
    outer, reach = [], -1
    for f in sorted(fields, key=lambda f: (f.start, -f.end)):
        if f.start >= reach:
            outer.append(f)
            reach = f.end
    return outer


def _gamma_bits(x: int) -> str:
    x += 1
    return "0" * (x.bit_length() - 1) + format(x, "b")


def _edge(rng, old: int | None = None) -> int:
    if old is not None and rng.random() < 0.4:
        return max(0, old + int(rng.choice([-2, -1, 1, 2, old or 1])))
    return int(rng.choice(EDGE_VALUES))


def mutate_blob(blob: bytes, fields: list[Field], rng) -> tuple[str, bytes]:
    """(mutation name, mutated blob)."""
    from bitarray import bitarray

    header, body = bytearray(blob[:6]), bitarray(endian="big")
    body.frombytes(blob[6:])
    roll = rng.random()
    if roll < 0.08:  # a header byte: format, dtype or flags
        i = int(rng.integers(3, 6))
        header[i] = int(rng.integers(0, 16))
        return f"header[{i}]", bytes(header) + body.tobytes()
    if roll < 0.16:  # plain damage
        choice = int(rng.integers(0, 3))
        if choice == 0:
            for _ in range(int(rng.integers(1, 5))):
                body.invert(int(rng.integers(0, len(body))))
            return "bitflip", bytes(header) + body.tobytes()
        if choice == 1:
            return "truncate", bytes(header) + body[: int(rng.integers(0, len(body)))].tobytes()
        extra = bitarray(endian="big")
        extra.frombytes(rng.integers(0, 256, int(rng.integers(1, 64)), np.uint8).tobytes())
        return "extend", bytes(header) + (body + extra).tobytes()
    f = fields[int(rng.integers(0, len(fields)))]
    old = body[f.start : f.end]
    if f.op == "gamma":
        value = int(old.to01().lstrip("0") or "1", 2) - 1
        new = bitarray(_gamma_bits(_edge(rng, value)), endian="big")
        name = "gamma"
    elif f.op == "uint":
        new = bitarray(format(int(rng.integers(0, 2**f.width)), f"0{f.width}b"), endian="big")
        name = "uint"
    else:
        new = old.copy()
        i = int(rng.integers(0, f.count))
        value = int(rng.integers(0, 2 ** min(f.width, 62)))
        new[i * f.width : (i + 1) * f.width] = bitarray(
            format(value, f"0{f.width}b")[-f.width :], endian="big"
        )
        name = "uints"
    body = body[: f.start] + new + body[f.end :]
    return f"{name}@{f.start}", bytes(header) + body.tobytes()


# -- files ------------------------------------------------------------------------------------


def split_file(data: bytes) -> tuple[dict, list[bytes]]:
    (header_len,) = struct.unpack_from("<I", data, 12)
    header = json.loads(data[20 : 20 + header_len])
    payloads, offset = [], 20 + header_len
    for entry in header["sections"]:
        payloads.append(data[offset : offset + entry["length"]])
        offset += entry["length"]
    return header, payloads


def join_file(header: dict, payloads: list[bytes], fix_lengths: bool = True) -> bytes:
    for entry, payload in zip(header["sections"], payloads, strict=True):
        if fix_lengths:
            entry["length"] = len(payload)
        entry["crc32"] = zlib.crc32(payload)
    text = json.dumps(header, separators=(",", ":")).encode()
    text = re.sub(rb'"' + HUGE.encode() + rb'(\d+)"', lambda m: b"9" * int(m[1]), text)
    prefix = struct.pack("<8sHHII", b"\x89LSCJAX\n", 1, 0, len(text), zlib.crc32(text))
    return prefix + text + b"".join(payloads)


def mutate_file(data: bytes, blob_fields: dict, rng) -> tuple[str, bytes]:
    """(mutation name, mutated file), lengths and CRCs recomputed (but for "length")."""
    header, payloads = split_file(data)
    sections = header["sections"]
    i = int(rng.integers(0, len(sections)))
    entry = sections[i]
    roll = rng.random()
    if roll < 0.45 and entry["kind"] == "encoded":
        fields = blob_fields.get(payloads[i])
        if fields is None:
            fields = blob_fields[payloads[i]] = trace_fields(payloads[i])
        name, payloads[i] = mutate_blob(payloads[i], fields, rng)
        return f"section[{i}]:{name}", join_file(header, payloads)
    if roll < 0.65 and entry["kind"] == "raw":
        shape = entry["shape"]
        choice = int(rng.integers(0, 4))
        if choice == 0 and shape:
            shape[int(rng.integers(0, len(shape)))] = _edge(rng)
        elif choice == 1:
            entry["shape"] = shape + [1] * int(rng.choice([1, 15, 60]))
        elif choice == 2:
            entry["shape"] = [int(rng.choice([0, 2**62, 10**30]))] + shape
        else:
            entry["dtype"] = str(rng.choice(["float64", "int8", "uint64", "object", "bool"]))
        return f"section[{i}]:raw", join_file(header, payloads)
    choice = int(rng.integers(0, 5))
    if choice == 0:
        entry["kind"] = str(rng.choice(["raw", "encoded", "pickle"]))
    elif choice == 1:
        other = sections[int(rng.integers(0, len(sections)))]["path"]
        entry["path"] = str(rng.choice([other, other + "/x", other.split("/")[0], ""]))
    elif choice == 2:
        entry["length"] = _edge(rng, entry["length"])
        return f"section[{i}]:length", join_file(header, payloads, fix_lengths=False)
    elif choice == 3:
        header["meta"]["n"] = f"{HUGE}{int(rng.choice([20, 400, 5000]))}"
    else:
        del sections[i]
        del payloads[i]
    return f"section[{i}]:header{choice}", join_file(header, payloads)


# -- the worker -------------------------------------------------------------------------------


def check_case(kind: str, data: bytes) -> dict:
    """Run one case in this process: {"outcome": "ok" | "format_error" | "exception" |
    "mismatch", "error": str, "peak": bytes}."""
    import tempfile
    import tracemalloc

    import lscjax
    from lscjax import FormatError, coding
    from lscjax._src.quant.qarray import QArray, check_codes, check_qarray

    def consistent(enc, what: str) -> str:
        """'' when the decoded data match what the header declares (NumPy only: no JAX)."""
        array = coding.decode(enc)
        if array.shape != enc.shape or array.dtype != enc.dtype:
            return f"{what}: decoded {array.shape} {array.dtype}, header {enc.shape} {enc.dtype}"
        q = enc.quantized
        if q is not None:
            check_qarray(what, QArray(array, q.codebook, q.method, q.bits, q.shape))
            check_codes(what, array, q.method, q.codebook.shape)
        return ""

    max_bytes = budget_for(data)
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    outcome, error = "ok", ""
    try:
        if kind == "blob":
            error = consistent(coding.Encoded.from_bytes(data, max_bytes=max_bytes), "blob")
        else:
            with tempfile.NamedTemporaryFile(suffix=".lsc") as f:
                f.write(data)
                f.flush()
                model = lscjax.load(f.name, layout="model", max_bytes=max_bytes)
            errors = [consistent(enc, path) for path, enc in model.encoded.items()]
            error = "; ".join(e for e in errors if e)
        outcome = "mismatch" if error else "ok"
    except FormatError as err:
        outcome, error = "format_error", str(err)[:200]
    except Exception as err:  # noqa: BLE001  (a finding, reported)
        outcome, error = "exception", f"{type(err).__name__}: {str(err)[:300]}"
    peak = tracemalloc.get_traced_memory()[1] - start
    return {"outcome": outcome, "error": error, "peak": peak}


def worker() -> None:
    """Read cases (kind byte, length, bytes) from stdin, answer one JSON line each."""
    import tracemalloc

    for kind, data in [("blob", d) for d in seed_blobs().values()]:  # imports, first calls
        check_case(kind, data)
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    size = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_LIMIT, size + MEMORY_LIMIT))
    tracemalloc.start()
    stdin, stdout = sys.stdin.buffer, sys.stdout
    stdout.write("ready\n")
    stdout.flush()
    while True:
        head = stdin.read(5)
        if len(head) < 5:
            return
        kind = "blob" if head[:1] == b"b" else "file"
        data = stdin.read(struct.unpack("<I", head[1:])[0])
        stdout.write(json.dumps(check_case(kind, data)) + "\n")
        stdout.flush()


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "JAX_PLATFORMS": "cpu"}
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        if self._line(600.0) != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.decode().strip() if line else None

    def run(self, kind: str, data: bytes) -> tuple[dict | None, float]:
        """(the worker's answer, or None when it died or timed out; seconds taken)."""
        start = time.perf_counter()
        try:
            self.proc.stdin.write((b"b" if kind == "blob" else b"f") + struct.pack("<I", len(data)))
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None, 0.0
        line = self._line(TIME_LIMIT)
        elapsed = time.perf_counter() - start
        return (json.loads(line) if line else None), elapsed

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclasses.dataclass
class Report:
    cases: int = 0
    outcomes: dict = dataclasses.field(default_factory=dict)
    per_seed: dict = dataclasses.field(default_factory=dict)
    findings: list = dataclasses.field(default_factory=list)
    max_seconds: float = 0.0
    max_peak_over_budget: float = 0.0
    seconds: float = 0.0


def fuzz(cases: int, seed: int = 0, findings_dir: Path | None = None) -> Report:
    """Run `cases` structure-aware mutations spread over every seed blob and file."""
    blobs = seed_blobs()
    seeds = [("blob", name, data) for name, data in blobs.items()]
    seeds += [("file", name, data) for name, data in seed_files(blobs).items()]
    blob_fields = {data: trace_fields(data) for data in blobs.values()}
    rng = np.random.default_rng(seed)
    report, worker_ = Report(), Worker()
    began = time.perf_counter()
    try:
        for n in range(cases):
            kind, name, data = seeds[n % len(seeds)]
            if kind == "blob":
                mutation, case = mutate_blob(data, blob_fields[data], rng)
            else:
                mutation, case = mutate_file(data, blob_fields, rng)
            answer, elapsed = worker_.run(kind, case)
            report.cases += 1
            report.per_seed[name] = report.per_seed.get(name, 0) + 1
            report.max_seconds = max(report.max_seconds, elapsed)
            if answer is None:
                alive = worker_.proc.poll() is None
                outcome = "hang" if alive else f"crash (exit {worker_.proc.returncode})"
                worker_.close()
                worker_ = Worker()
                answer = {"outcome": outcome, "error": "", "peak": 0}
            allowed = budget_for(case) + 128 * len(case) + SLACK_BYTES
            report.max_peak_over_budget = max(report.max_peak_over_budget, answer["peak"] / allowed)
            outcome = answer["outcome"]
            if answer["peak"] > allowed:
                outcome = "over budget"
            report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
            if outcome not in ("ok", "format_error"):
                finding = {"seed": name, "mutation": mutation, "outcome": outcome}
                finding |= {"error": answer["error"], "peak": answer["peak"], "bytes": case.hex()}
                report.findings.append(finding)
                if findings_dir is not None:
                    findings_dir.mkdir(parents=True, exist_ok=True)
                    suffix = ".lsc" if kind == "file" else ".bin"
                    (findings_dir / f"{len(report.findings):05d}{suffix}").write_bytes(case)
    finally:
        worker_.close()
    report.seconds = time.perf_counter() - began
    return report


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    worker()
