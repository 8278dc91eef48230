"""LSC's encoder against SRI's on real weights: time and bytes, with the block size estimated from
the block counts (the default above EXACT_SEARCH_ELEMENTS elements) or chosen by encoding every
candidate.

    python benchmarks/lsc_encode.py            # all-MiniLM-L6-v2's 37 kernels at 90% sparsity
    python benchmarks/lsc_encode.py --quick    # 8 random 384 x 1536 matrices, no JSON

Each kernel (Flax orientation, from the Hugging Face safetensors file) is magnitude-pruned to
90% per layer; its float32 values are encoded with entropy "ans" as "sri", as "lsc" (block size
estimated) and as "lsc" with every BLOCK_CANDIDATES size encoded and the fewest bits kept (the
search used up to 2^20 elements before). Time: CPU seconds (time.process_time) over all kernels,
median and fastest of --repeats runs, each format timed in turn within a run. Bytes: the sum of
the `Encoded` byte strings. Writes benchmarks/results/lsc_encode.json.
"""

import argparse
import json
import pathlib
import time

import numpy as np

from lscjax import coding
from lscjax._src.coding import lsc

RESULTS = pathlib.Path(__file__).parent / "results" / "lsc_encode.json"
GOAL_TIME, GOAL_BYTES = 1.5, 0.01


def minilm_kernels(path: pathlib.Path) -> list[np.ndarray]:
    """The 2-D Linear kernels of a BERT safetensors file, as Flax [in, out] float32."""
    from safetensors.numpy import load_file

    from lscjax._src.hf_layout import from_torch
    from lscjax._src.tree import leaves_with_paths

    tensors = load_file(str(path))
    tree, _ = from_torch({k: v for k, v in tensors.items() if np.issubdtype(v.dtype, np.floating)})
    return [np.asarray(w) for p, w in leaves_with_paths(tree) if p.endswith("kernel")]


def pruned(w: np.ndarray, sparsity: float) -> np.ndarray:
    threshold = np.quantile(np.abs(w), sparsity)
    return np.where(np.abs(w) > threshold, w, 0).astype(np.float32)


def encode_all(kernels, fmt: str, exact: bool) -> tuple[float, int]:
    """(CPU seconds, bytes) of encoding every kernel."""
    saved = lsc.EXACT_SEARCH_ELEMENTS
    lsc.EXACT_SEARCH_ELEMENTS = max(w.size for w in kernels) if exact else saved
    try:
        start = time.process_time()
        size = sum(len(coding.encode(w, fmt, entropy="ans").to_bytes()) for w in kernels)
        return time.process_time() - start, size
    finally:
        lsc.EXACT_SEARCH_ELEMENTS = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="random matrices, no JSON")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument(
        "--model", help="all-MiniLM-L6-v2's folder (default: the installed wheel's)"
    )
    args = parser.parse_args()
    if args.quick:
        rng = np.random.default_rng(0)
        kernels = [rng.standard_normal((384, 1536), np.float32) for _ in range(8)]
    else:
        from ptq_minilm import find_model

        kernels = minilm_kernels(find_model(args.model) / "model.safetensors")
    kernels = [pruned(w, args.sparsity) for w in kernels]
    cases = {"sri": ("sri", False), "lsc": ("lsc", False), "lsc_exact": ("lsc", True)}
    times = {name: [] for name in cases}
    sizes = {}
    for _ in range(1 if args.quick else args.repeats):
        for name, (fmt, exact) in cases.items():
            seconds, sizes[name] = encode_all(kernels, fmt, exact)
            times[name].append(seconds)
    weights = sum(w.size for w in kernels)
    rows = {}
    for name in cases:
        median, fastest = float(np.median(times[name])), float(min(times[name]))
        rows[name] = {"median_s": median, "fastest_s": fastest, "bytes": sizes[name]}
        print(
            f"{name:10s} {median:6.3f} s (fastest {fastest:.3f}), "
            f"{4 * weights / median / 2**20:6.0f} MiB/s of dense float32, {sizes[name]} bytes"
        )
    time_ratio = rows["lsc"]["median_s"] / rows["sri"]["median_s"]
    bytes_change = rows["lsc"]["bytes"] / rows["lsc_exact"]["bytes"] - 1
    print(f"GOAL lsc / sri time <= {GOAL_TIME}: {time_ratio:.2f}")
    print(f"GOAL lsc bytes vs every candidate encoded within {GOAL_BYTES:.0%}: {bytes_change:+.3%}")
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        out = {"kernels": len(kernels), "weights": weights, "sparsity": args.sparsity, **rows}
        out |= {"lsc_over_sri_time": time_ratio, "lsc_bytes_change": bytes_change}
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
