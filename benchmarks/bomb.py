"""A decompression bomb: a ~200-byte .lsc file whose one section declares a 1 GiB float32 tensor.

    python benchmarks/bomb.py           # 200 loads, writes benchmarks/results/bomb.json
    python benchmarks/bomb.py --quick   # 20 loads, no JSON

`lscjax.load` must refuse it (FormatError, the reading budget) in under 10 ms with under 10 MB
allocated: time per load (median and fastest), the peak of Python-traced allocations
(tracemalloc) and the growth of the process's peak RSS over the loads. Exits 1 when a goal fails.
"""

import argparse
import json
import pathlib
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc

from lscjax import FormatError, load
from lscjax._src import container
from lscjax._src.coding.bitstream import BitWriter
from lscjax._src.coding.encoded import MAGIC, VERSION
from lscjax._src.coding.formats import NAMES
from lscjax._src.coding.values import DTYPES

RESULTS = pathlib.Path(__file__).parent / "results" / "bomb.json"


def bomb() -> bytes:
    """A .lsc file with one dense float32 section of 2^28 elements (1 GiB) and no data."""
    w = BitWriter()
    for x in (2, 2**14, 2**14):  # shape (16384, 16384)
        w.gamma(x)
    blob = MAGIC + bytes([VERSION, NAMES.index("dense"), DTYPES.index("float32"), 0])
    meta = {"recipe": {"name": "lsc", "sparsity": 0.9}, "note": "x" * 20}
    return container.pack(
        meta, [({"path": "Dense_0/kernel", "kind": "encoded"}, blob + w.getvalue())]
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    data = bomb()
    loads = 20 if args.quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "bomb.lsc"
        path.write_bytes(data)
        try:
            load(path)  # imports and first call
        except FormatError as err:
            message = str(err)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        times, peaks = [], []
        for _ in range(loads):
            tracemalloc.start()
            start = time.perf_counter()
            try:
                load(path)
                refused = False
            except FormatError:
                refused = True
            times.append(time.perf_counter() - start)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            assert refused, "the bomb was accepted"
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    result = {
        "file_bytes": len(data),
        "declared_bytes": 4 * 2**28,
        "loads": loads,
        "median_ms": 1e3 * statistics.median(times),
        "fastest_ms": 1e3 * min(times),
        "slowest_ms": 1e3 * max(times),
        "peak_traced_bytes": max(peaks),
        "peak_rss_growth_bytes": rss_growth,
        "error": message,
    }
    ok = result["median_ms"] < 10 and max(peaks) < 10e6 and rss_growth < 10e6
    result["goals"] = "PASS" if ok else "FAIL"
    print(json.dumps(result, indent=1))
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
