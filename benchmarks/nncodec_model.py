"""Whole-model files at equal sentence-embedding fidelity: lscjax against NNCodec (MPEG NNR).

    python benchmarks/nncodec_model.py [--qps=-20,-23,...] [--lams 0.002,0.005,...] [--calibrated]
                                       [--merge]

Both codecs compress every float tensor of all-MiniLM-L6-v2 that the encoder uses (embeddings,
the 36 Linear weights and their biases, LayerNorms: the checkpoint without its pooler), and each
decoded model is scored by the mean cosine of its sentence embeddings (mean pooling, L2
normalised) to the dense model's on the evaluation sentences of benchmarks/ptq_minilm.py
(examples/data/sentences.txt from line 301 on). Size: NNCodec's bitstream, lscjax's whole .lsc
file (`lscjax.save`, header and every section). The table gives, per codec, the smallest size
whose mean cosine reaches each fidelity, interpolated between measured points (linear in log
size).

- NNCodec: `nnc.compress` of the Hugging Face tensors ([out, in] weights) at each qp, its
  default settings (dependent quantization on, lambda_scale 0), in its own virtual environment
  (as benchmarks/nncodec.py documents; --nncodec-python).
- lscjax: `lscjax.quant.rdq(params, lam, grid="trellis")` of every 2-D leaf (embedding tables
  and kernels, one lam for all: relative MSE + lam x bits per layer) at each lam, in format
  "trellis" (entropy "ans"), the 1-D leaves kept float32; no calibration data. With
  --calibrated also the calibration-aware path: the 36 encoder kernels by rate-aware GPTQ at
  the same lam (`lscjax.quant.gptq(..., lam=lam)`, 6-bit k-means grid, act-order,
  layer-sequential on the first 300 sentences as benchmarks/ptq_minilm.py calibrates; format
  "dense", entropy "context"), the embedding tables as above.

Writes benchmarks/results/nncodec_model.json.
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

RESULTS = pathlib.Path(__file__).parent / "results" / "nncodec_model.json"
NNCODEC_PYTHON = str(pathlib.Path("~/.venvs/nncodec/bin/python").expanduser())
QPS = (-20, -23, -26, -29, -32, -35)
LAMS = (0.002, 0.005, 0.01, 0.02, 0.04)
FIDELITIES = (0.98, 0.99, 0.995)


def nncodec_half(tensors_path: str, out_dir: str, qps) -> None:
    """(In NNCodec's interpreter) each qp's bitstream size and decoded tensors -> out_dir."""
    here = pathlib.Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from nncodec import _inert_torchvision, nnc_bitstream  # the benchmark script's helpers

    _inert_torchvision()
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != here]
    del sys.modules["nncodec"]
    from nncodec import nnc  # now the package

    data = np.load(tensors_path)
    tensors = {k: data[k] for k in data.files}
    rows = []
    for qp in qps:
        start = time.perf_counter()
        stream = nnc_bitstream(nnc, tensors, out_dir, qp, 0.0)
        encode_s = time.perf_counter() - start
        decoded = nnc.decompress(stream)
        np.savez(os.path.join(out_dir, f"qp{qp}.npz"), **{k: decoded[k] for k in tensors})
        rows.append({"qp": qp, "bytes": len(stream), "encode_s": encode_s})
        print(rows[-1], flush=True)
    pathlib.Path(out_dir, "rows.json").write_text(json.dumps(rows))


def model_folder(path):
    from ptq_minilm import find_model

    return find_model(path)


def used_tensors(folder) -> dict:
    """{name: float32 array} of the checkpoint's tensors that `bert_from_hf` reads."""
    from safetensors.numpy import load_file

    return {
        k: v.astype(np.float32)
        for k, v in load_file(str(folder / "model.safetensors")).items()
        if np.issubdtype(v.dtype, np.floating) and not k.startswith("pooler.")
    }


def fidelity_scorer(folder, tokens, count=None):
    """(params, score): score(params) -> (mean, min) cosine to the dense model's sentence
    embeddings on the evaluation sentences (the first `count` of them), tokenized with the
    tokenizer of the folder `tokens` (ids taken modulo the model's vocabulary)."""
    import jax
    from ptq_minilm import SENTENCES, chunks

    from lscjax.models import bert_from_hf, sentence_embedding, tokenize

    module, params = bert_from_hf(folder)
    sentences = SENTENCES.read_text(encoding="utf-8").splitlines()[300:]
    ids, mask = tokenize(tokens, sentences[:count])
    ids = ids % params["embeddings"]["word_embeddings"]["embedding"].shape[0]
    embed = jax.jit(lambda p, i, m: sentence_embedding(module.apply({"params": p}, i, m), m))

    def embeddings(p):
        return np.concatenate([np.asarray(embed(p, i, m)) for i, m in chunks(ids, mask, 64)])

    dense = embeddings(params)

    def score(p):
        cosine = np.sum(dense * embeddings(p), axis=1)
        return float(cosine.mean()), float(cosine.min())

    return params, score


def calibration(folder):
    """`lscjax.Calibration` on the first 300 sentences, as benchmarks/ptq_minilm.py's."""
    from ptq_minilm import SENTENCES, chunks

    import lscjax
    from lscjax.models import bert_from_hf, tokenize

    module, _ = bert_from_hf(folder)
    ids, mask = tokenize(folder, SENTENCES.read_text(encoding="utf-8").splitlines()[:300])
    return lscjax.Calibration(
        lambda p, b: module.apply({"params": p}, b[0], b[1]),
        chunks(ids, mask, 30),
        row_mask=lambda b: b[1],
    )


def nncodec_rows(folder, python, qps, score) -> list:
    """NNCodec's points: size and fidelity per qp (its half run in its own interpreter)."""
    from safetensors.numpy import save_file

    from lscjax.models import bert_from_hf

    if not qps:
        return []
    if not pathlib.Path(python).exists():
        print(f"skipped NNCodec: no interpreter at {python}")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "t.npz"), **used_tensors(folder))
        cmd = [python, __file__, "--nncodec-half", os.path.join(tmp, "t.npz"), tmp]
        subprocess.run(cmd + ["--qps=" + ",".join(map(str, qps))], check=True)
        shutil.copy(folder / "config.json", tmp)
        for row in json.loads(pathlib.Path(tmp, "rows.json").read_text()):
            decoded = dict(np.load(os.path.join(tmp, f"qp{row['qp']}.npz")))
            save_file(decoded, os.path.join(tmp, "model.safetensors"))
            _, params = bert_from_hf(tmp)
            mean, low = score(params)
            rows.append({**row, "mean_cosine": mean, "min_cosine": low})
            print("nncodec", rows[-1], flush=True)
    return rows


CALIBRATED = {  # grid: (bits, the kernels' format, entropy)
    "kmeans": (6, "dense", "context"),
    "trellis": (14, "trellis", "ans"),
}
CURVES = {"kmeans": "lscjax_calibrated", "trellis": "lscjax_calibrated_trellis"}


def calibrated_kernels(params, cal, lam, grid) -> dict:
    """{path: QArray} of the encoder kernels by rate-aware GPTQ at `lam` onto `grid` (6-bit
    k-means codebook per layer, or the trellis), act-order, layer-sequential on the calibration
    batches."""
    from ptq_minilm import is_kernel

    import lscjax
    from lscjax._src.tree import leaves_with_paths, map_selected

    done = {}

    def layer(p, one):
        (path,) = one
        q = lscjax.quant.gptq(p, one, CALIBRATED[grid][0], grid=grid, lam=lam, act_order=True)
        done[path] = dict(leaves_with_paths(q, is_leaf=lscjax.quant.is_qarray))[path]
        return map_selected(
            lambda _, __: done[path].dequantize(), p, where=lambda r, _: r == path, fill="keep"
        )

    cal.sequential(params, layer, where=is_kernel)
    return done


def lscjax_rows(params, lams, score, cal=None, grid="kmeans") -> list:
    """lscjax's points: every 2-D leaf by `quant.rdq(grid="trellis")` at each lam, in format
    "trellis"; the 1-D leaves float32. With `cal`, the encoder kernels instead by rate-aware
    GPTQ onto `grid` at the same lam (`calibrated_kernels`; format and entropy CALIBRATED)."""
    import lscjax
    from lscjax._src.tree import leaves_with_paths

    def two_d(path, leaf):
        return np.ndim(leaf) == 2

    # the container's metadata and raw leaves, from a recipe over one small table
    token_types = "embeddings/token_type_embeddings/embedding"
    base = lscjax.compress(
        params, lscjax.Recipe("trellis", sparsity=0.0, bits=8), where=lambda p, _: p == token_types
    )
    rows = []
    for lam in lams:
        start = time.perf_counter()
        kernels = {} if cal is None else calibrated_kernels(params, cal, lam, grid)
        q = lscjax.quant.rdq(
            params,
            lam,
            grid="trellis",
            max_bits=14,
            where=lambda p, v, skip=kernels: two_d(p, v) and p not in skip,
        )
        encoded = {
            p: lscjax.coding.encode(leaf, "trellis", entropy="ans")
            for p, leaf in leaves_with_paths(q, is_leaf=lscjax.quant.is_qarray)
            if lscjax.quant.is_qarray(leaf)
        }
        _, fmt, entropy = CALIBRATED[grid]
        encoded |= {p: lscjax.coding.encode(k, fmt, entropy=entropy) for p, k in kernels.items()}
        raw = {p: v for p, v in base.raw.items() if p not in encoded}
        model = lscjax.CompressedModel(encoded=encoded, raw=raw, meta=base.meta)
        encode_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            size = lscjax.save(pathlib.Path(tmp) / "m.lsc", model)
            back = lscjax.load(pathlib.Path(tmp) / "m.lsc")
        mean, low = score(back)
        rows.append(
            {"lam": lam, "calibrated": None if cal is None else grid, "bytes": size,
             "encode_s": encode_s, "mean_cosine": mean, "min_cosine": low}
        )  # fmt: skip
        print("lscjax", rows[-1], flush=True)
    return rows


def bytes_at(rows: list, fidelity: float) -> float | None:
    """The smallest size reaching `fidelity` mean cosine, interpolated (log size); None when no
    two measured points bracket it."""
    points = sorted((r["bytes"], r["mean_cosine"]) for r in rows)
    for (b0, c0), (b1, c1) in zip(points, points[1:], strict=False):
        if c0 < fidelity <= c1:
            t = (fidelity - c0) / (c1 - c0)
            return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--nncodec-python", default=NNCODEC_PYTHON)
    parser.add_argument("--qps", default=",".join(map(str, QPS)))
    parser.add_argument("--lams", default=",".join(map(str, LAMS)))
    parser.add_argument(
        "--calibrated",
        nargs="*",
        default=[],
        choices=list(CALIBRATED),
        help="also the calibration-aware curves onto these grids (slow)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the stored points of other qps and lams"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the tiny BERT test fixture on 8 sentences, lscjax only (a smoke test; no JSON)",
    )
    parser.add_argument("--nncodec-half", nargs=2, metavar=("TENSORS_NPZ", "OUT_DIR"))
    args = parser.parse_args(argv)
    qps = [int(q) for q in args.qps.split(",") if q]
    if args.nncodec_half:
        nncodec_half(*args.nncodec_half, qps)
        return
    lams = [float(x) for x in args.lams.split(",") if x]
    if args.quick:
        fixture = pathlib.Path(__file__).parent.parent / "tests" / "fixtures" / "tiny_bert"
        params, score = fidelity_scorer(fixture, model_folder(args.model), 8)
        lscjax_rows(params, lams[:2], score)  # prints its points
        return
    folder = model_folder(args.model)
    params, score = fidelity_scorer(folder, folder)
    checkpoint = (folder / "model.safetensors").stat().st_size
    curves = {"nncodec": nncodec_rows(folder, args.nncodec_python, qps, score)}
    curves["lscjax"] = lscjax_rows(params, lams, score)
    for grid in args.calibrated:
        cal = calibration(folder)
        curves[CURVES[grid]] = lscjax_rows(params, lams, score, cal, grid)
    if args.merge and RESULTS.exists():  # earlier points of other settings stay
        before = json.loads(RESULTS.read_text())
        for name, rows in before.items():
            if name in ("nncodec", "lscjax", *CURVES.values()):
                settings = qps if name == "nncodec" else lams
                key = "qp" if name == "nncodec" else "lam"
                ran = name in curves
                curves.setdefault(name, [])
                curves[name] += [r for r in rows if not ran or r[key] not in settings]
    table = [{"fidelity": f, **{n: bytes_at(r, f) for n, r in curves.items()}} for f in FIDELITIES]
    names = list(curves)
    print("\n| mean cosine | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for row in table:
        cells = ["-" if row[n] is None else f"{row[n]:,.0f}" for n in names]
        print(f"| {row['fidelity']} | " + " | ".join(cells) + " |")
    RESULTS.parent.mkdir(exist_ok=True)
    out = {"checkpoint_bytes": checkpoint, **curves, "table": table}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
