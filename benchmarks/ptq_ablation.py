"""What the dense target, the damping and each layer role cost or gain: SparseGPT + refit of
all-MiniLM-L6-v2's encoder kernels, one layer at a time, no quantization.

    python benchmarks/ptq_ablation.py [--runs NAME ...] [--quick]

The calibration and evaluation sentences are benchmarks/ptq_minilm.py's. Each run calls the library
functions per layer in `Calibration.sequential(..., cross=True)`: `lscjax.prune.dense_target`
(unless its damping is None), `lscjax.prune.sparsegpt` and `lscjax.prune.refit`, with the
sparsity of each kernel's role (q, k, v: the attention query / key / value kernels; o: the
attention output; i, f: the FFN input and output; 0.5 unless the run names another), and prints
the mean and minimum cosine of the evaluation sentences' embeddings to the dense model's (no file
is written). Runs (target damping, SparseGPT damping, refit damping, sparsities):

  none            no target, 0.01, 0.01
  target0.01      target 0.01, 0.01, 0.01 (likewise target0.1, target0.3, target1.0)
  damp0.01-0.1    target 0.3, 0.01, 0.1 (likewise damp0.1-0.1, damp0.1-0.3, damp0.3-0.1)
  dense-qk        target 0.3, 0.1, 0.1, query and key kept dense (likewise dense-vo, dense-i,
                  dense-f)
  qk60-vo40       target 0.3, 0.1, 0.1, q / k at 60% and v / o at 40% (likewise qk40-vo60,
                  i40-f60, i60-f40)

--quick runs the tiny BERT test fixture on 8 sentences (a smoke test; numbers not recorded).
Writes benchmarks/results/ptq_ablation.json (one entry per run, merged with earlier runs).
"""

import argparse
import json
import time

import numpy as np
from ptq_minilm import ROOT, is_kernel, setup

import lscjax

RESULTS = ROOT / "benchmarks" / "results" / "ptq_ablation.json"
ROLES = {"q": "self/query/", "k": "self/key/", "v": "self/value/", "o": "attention/output/"}
ROLES |= {"i": "intermediate/", "f": "/output/dense/"}
RUNS = {"none": (None, 0.01, 0.01, {})}
RUNS |= {f"target{t}": (t, 0.01, 0.01, {}) for t in (0.01, 0.1, 0.3, 1.0)}
RUNS |= {
    f"damp{a}-{b}": (0.3, a, b, {}) for a, b in ((0.01, 0.1), (0.1, 0.1), (0.1, 0.3), (0.3, 0.1))
}
RUNS |= {f"dense-{r}": (0.3, 0.1, 0.1, dict.fromkeys(r, 0.0)) for r in ("qk", "vo", "i", "f")}
RUNS |= {
    "qk60-vo40": (0.3, 0.1, 0.1, dict(q=0.6, k=0.6, v=0.4, o=0.4)),
    "qk40-vo60": (0.3, 0.1, 0.1, dict(q=0.4, k=0.4, v=0.6, o=0.6)),
    "i40-f60": (0.3, 0.1, 0.1, dict(i=0.4, f=0.6)),
    "i60-f40": (0.3, 0.1, 0.1, dict(i=0.6, f=0.4)),
}


def role(path):
    """The role letter of an encoder kernel path (the FFN output after the attention output)."""
    return next(
        r for r, part in ROLES.items() if part in path and not (r == "f" and "attention" in path)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    _, _, params, cal, embed_all, evals = setup(args.model, args.quick)
    dense = embed_all(params)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.quick else {}
    for name in args.runs:
        target, prune_damp, refit_damp, sparsities = RUNS[name]

        def layer(
            p,
            one,
            target=target,
            sparsities=sparsities,
            prune_damp=prune_damp,
            refit_damp=refit_damp,
        ):
            ((path, _),) = one.items()
            if target is not None:
                p = lscjax.prune.dense_target(p, one, damp=target)
            sparsity = sparsities.get(role(path), 0.5)
            if sparsity == 0:
                return p
            pruned, masks = lscjax.prune.sparsegpt(p, one, sparsity, damp=prune_damp)
            return lscjax.prune.refit(p, masks, one, start=pruned, damp=refit_damp)

        start = time.perf_counter()
        out = cal.sequential(params, layer, where=is_kernel, cross=target is not None)
        seconds = time.perf_counter() - start
        kernels = [w for p, w in lscjax._src.tree.leaves_with_paths(out) if is_kernel(p)]
        cosine = np.sum(dense * embed_all(out), axis=1)
        row = {
            "mean cosine": float(cosine.mean()),
            "min cosine": float(cosine.min()),
            "sparsity": float(
                sum(int(np.sum(w == 0)) for w in kernels) / sum(w.size for w in kernels)
            ),
            "seconds": seconds,
            "evaluation sentences": len(evals),
        }
        print(name, json.dumps(row), flush=True)
        if not args.quick:
            results[name] = row
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
