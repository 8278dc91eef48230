"""Bits per weight against relative MSE: plain k-means + rANS against `lscjax.quant.rdq`.

    python benchmarks/rdq_minilm.py [--model FOLDER] [--quick]

The 36 encoder Linear kernels of all-MiniLM-L6-v2 (dense, unpruned). Each point quantizes every
kernel and encodes it ("dense" format, rANS); bits per weight = 8 x encoded bytes / weights,
relative MSE = sum ||W - Q||^2 / sum N Var(W) over the kernels. Curves: `lscjax.quant.kmeans`
at 3-7 bits (linear init), `rdq` grid="kmeans" (from the 8-bit k-means codebook) and
grid="uniform" over a range of lam. For each rdq point the table gives the bits k-means needs
at the same relative MSE (log-log interpolation of its curve) and how many fewer rdq needs.

--quick runs the tiny BERT test fixture (a smoke test; numbers not recorded).
Writes benchmarks/results/rdq_minilm.json.
"""

import argparse
import json
import pathlib
import time

import numpy as np
from ptq_minilm import find_model

import lscjax
from lscjax._src.quant.rdq import prepare_all, solve_all
from lscjax._src.rdq_target import measure
from lscjax._src.tree import selected_leaves
from lscjax.models import bert_from_hf

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rdq_minilm.json"
KMEANS_BITS = (3, 4, 5, 6, 7)
LAMS = (2e-4, 6e-4, 2e-3, 6e-3, 2e-2, 6e-2)


def is_kernel(path, _=None):
    return path.startswith("encoder/") and path.endswith("/kernel")


def point(params, q, paths):
    m = measure(params, q, paths, format="dense", entropy="ans", options={})
    return {"bits": m.bits, "distortion": m.distortion}


def kmeans_bits_at(curve, distortion):
    """Bits k-means needs at `distortion` (log-log interpolation; None outside its curve)."""
    d = np.log([p["distortion"] for p in curve])
    b = np.log([p["bits"] for p in curve])
    order = np.argsort(d)
    x = np.log(distortion)
    if not d.min() <= x <= d.max():
        return None
    return float(np.exp(np.interp(x, d[order], b[order])))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    folder = ROOT / "tests" / "fixtures" / "tiny_bert" if args.quick else find_model(args.model)
    _, params = bert_from_hf(folder)
    kernels = selected_leaves(params, is_kernel)
    paths = [p for p, _ in kernels]
    print(f"{len(paths)} kernels, {sum(np.size(w) for _, w in kernels)} weights")
    curves = {"kmeans": []}
    for bits in KMEANS_BITS[:2] if args.quick else KMEANS_BITS:
        start = time.perf_counter()
        q = lscjax.quant.kmeans(params, bits, where=is_kernel)
        curves["kmeans"].append({"bits_setting": bits, **point(params, q, paths)})
        print("kmeans", curves["kmeans"][-1], f"{time.perf_counter() - start:.0f} s", flush=True)
    for grid in ("kmeans", "uniform"):
        layers = prepare_all(
            params, grid=grid, max_bits=8, weights=None, where=is_kernel, init="linear", seed=0
        )
        curves[f"rdq_{grid}"] = []
        for lam in LAMS[:2] if args.quick else LAMS:
            start = time.perf_counter()
            entry = {"lam": lam, **point(params, solve_all(params, layers, lam), paths)}
            ref = kmeans_bits_at(curves["kmeans"], entry["distortion"])
            entry["kmeans_bits"] = ref
            entry["fewer_bits"] = None if ref is None else 1 - entry["bits"] / ref
            curves[f"rdq_{grid}"].append(entry)
            print(f"rdq {grid}", entry, f"{time.perf_counter() - start:.0f} s", flush=True)
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(curves, indent=1))


if __name__ == "__main__":
    main()
