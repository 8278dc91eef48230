"""k-means inits on real transformer layers: distortion at equal bits, all-MiniLM-L6-v2's kernels.

    python benchmarks/kmeans_init.py [--bits 3 4 5] [--quick]

For every encoder Dense kernel of all-MiniLM-L6-v2 (36 of them, 147,456 to 589,824 weights) and
each init of `lscjax.quant.kmeans` ("linear", "density", "random", "kmeans++"), runs the
library's k-means (Lloyd to convergence, on the layer's SAMPLE_POINTS-weight sample) and measures
the mean squared error of every weight to its centroid. Prints, per bit width and init, the
geometric mean over the layers of that error relative to the best init's on the same layer, the
number of layers on which the init is best, and the worst layer's ratio. --quick: the tiny BERT
fixture (a smoke test; numbers not recorded).
Writes benchmarks/results/kmeans_init.json.
"""

import argparse
import json
import pathlib

import jax
import numpy as np
from ptq_minilm import find_model  # benchmarks/ is on sys.path when run as a script

from lscjax._src.quant.kmeans import MAX_ITERS, kmeans_leaf
from lscjax._src.quant.lloyd import INITS
from lscjax._src.tree import leaves_with_paths
from lscjax.models import bert_from_hf

ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "kmeans_init.json"


def distortion(w: np.ndarray, q) -> float:
    return float(np.mean((w - np.asarray(q.dequantize())) ** 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--bits", type=int, nargs="*", default=[3, 4, 5])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    folder = ROOT / "tests" / "fixtures" / "tiny_bert" if args.quick else find_model(args.model)
    _, params = bert_from_hf(folder)
    kernels = [
        (p, np.asarray(w, np.float32))
        for p, w in leaves_with_paths(params)
        if p.startswith("encoder/") and p.endswith("/kernel")
    ]
    out = {"layers": len(kernels), "weights": sum(w.size for _, w in kernels)}
    for bits in args.bits:
        errors = np.zeros((len(kernels), len(INITS)))
        for li, (_, w) in enumerate(kernels):
            for ii, init in enumerate(INITS):
                key = jax.random.fold_in(jax.random.key(0), li)
                q = kmeans_leaf(w, bits, init=init, iters=MAX_ITERS, key=key)
                errors[li, ii] = distortion(w, q)
        ratio = errors / errors.min(axis=1, keepdims=True)
        row = {}
        for ii, init in enumerate(INITS):
            row[init] = {
                "geomean ratio to best": float(np.exp(np.mean(np.log(ratio[:, ii])))),
                "worst ratio to best": float(ratio[:, ii].max()),
                "layers best": int(np.sum(np.argmin(errors, axis=1) == ii)),
                "mean MSE": float(errors[:, ii].mean()),
            }
        print(f"{bits}-bit", json.dumps(row), flush=True)
        out[f"{bits}-bit"] = row
    if not args.quick:
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
