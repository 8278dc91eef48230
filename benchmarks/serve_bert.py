"""End-to-end BERT encoder latency: dense against served from the compressed form, in one run.

The encoder is `lscjax.models.bert_from_hf(--model)` or, without a folder, a random encoder of
all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, FFN 1536). Its 36 encoder Dense
kernels are pruned with one of three masks, at 50 / 70 / 90 % sparsity:

* "unstructured": the smallest weights of each kernel (every 32 x 32 block stays non-zero);
* "block": 32 x 32 blocks of the kernel at random positions;
* "balanced": the same number of 32 x 32 blocks in every output block row.

Each pruned model is timed as float values and as 4-bit k-means codes (15 levels + 0), through
``jax.jit(compressed_apply(model.apply))`` at (batch, tokens) = (1, 128), (8, 128), (32, 128):

* "dense": ``model.apply`` on the pruned (decoded) weights, the baseline;
* "default": `lscjax.flax.to_block_sparse` with its default max_density (kernels denser than
  that are served dense);
* "forced": every kernel block-sparse (max_density=1.0).

The functions take turns (round-robin, fastest and median of --reps calls); speedups are
dense / served time of the same point in the same run, on the median call (the fastest beside). Writes benchmarks/results/serve_bert.json.

Usage: python benchmarks/serve_bert.py [--model FOLDER] [--reps 5] [--masks ...] [--sparsities ...]
       [--quick] [--out PATH]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from matmul import best_times, write_results

import lscjax
from lscjax._src.sparse.random import random_block_kernel
from lscjax._src.tree import path_str
from lscjax.flax import DEFAULT_MAX_DENSITY, compressed_apply, to_block_sparse

MINILM = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
)
QUICK = dict(
    MINILM,
    num_hidden_layers=2,
    hidden_size=128,
    num_attention_heads=4,
    intermediate_size=512,
    vocab_size=1000,
)
POINTS = ((1, 128), (8, 128), (32, 128))
MASKS = ("unstructured", "block", "balanced")
SPARSITIES = (0.5, 0.7, 0.9)
BLOCK = 32


def random_model(config: dict, seed: int = 0):
    """A Bert of `config` with random weights (N(0, 0.02), as BERT initialises)."""
    model = lscjax.models.Bert(lscjax.models.BertConfig(**config))
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model.init(jax.random.key(seed), ids, jnp.ones_like(ids))["params"]
    return model, params


def pruned(params, mask: str, sparsity: float, seed: int = 0):
    """The encoder's Dense kernels pruned by `mask` to `sparsity`; other leaves unchanged."""
    rng = np.random.default_rng(seed)

    def prune(kp, w):
        path = path_str(kp)
        if not (path.startswith("encoder") and path.endswith("kernel")):
            return w
        w = np.asarray(w)
        if mask == "unstructured":
            return jnp.asarray(np.where(np.abs(w) > np.quantile(np.abs(w), sparsity), w, 0.0))
        keep = random_block_kernel(rng, w.shape, BLOCK, 1 - sparsity, balanced=mask == "balanced")
        return jnp.asarray(np.where(keep != 0, w, 0.0))

    return jax.tree_util.tree_map_with_path(prune, params)


def encoder_kernels(path: str, leaf) -> bool:
    return path.startswith("encoder") and path.endswith("kernel")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a Hugging Face BERT folder")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small encoder, 90%% only")
    parser.add_argument("--masks", nargs="+", choices=MASKS, default=MASKS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.model:
        model, params = lscjax.models.bert_from_hf(args.model)
    else:
        model, params = random_model(QUICK if args.quick else MINILM)
    points = POINTS[:2] if args.quick else POINTS
    sparsities = (0.9,) if args.quick else args.sparsities
    apply = jax.jit(compressed_apply(model.apply))
    rows = []
    for mask in args.masks:
        for sparsity in sparsities:
            weights = pruned(params, mask, sparsity)
            for storage in ("float", "4bit"):
                if storage == "4bit":
                    weights = lscjax.quant.kmeans(weights, 4, where=encoder_kernels, iters=3)
                decoded = lscjax.quant.dequantize(weights)
                served = {
                    "dense": decoded,
                    "default": to_block_sparse(weights, BLOCK, where=encoder_kernels),
                    "forced": to_block_sparse(
                        weights, BLOCK, where=encoder_kernels, max_density=1.0
                    ),
                }
                for batch, tokens in points:
                    ids = jnp.asarray(
                        np.random.default_rng(1).integers(
                            0, model.config.vocab_size, (batch, tokens)
                        ),
                        jnp.int32,
                    )
                    mask_ids = jnp.ones_like(ids)
                    fns = {name: apply for name in served}
                    fn_args = {name: ({"params": p}, ids, mask_ids) for name, p in served.items()}
                    best, median = best_times(fns, fn_args, args.reps)
                    row = dict(
                        mask=mask, sparsity=sparsity, storage=storage, batch=batch, tokens=tokens
                    )
                    for name in served:
                        row[f"{name}_ms"] = best[name] * 1e3
                        row[f"{name}_median_ms"] = median[name] * 1e3
                    for name in ("default", "forced"):
                        row[f"{name}_speedup"] = median["dense"] / median[name]
                        row[f"{name}_fastest_speedup"] = best["dense"] / best[name]
                    rows.append(row)
                    print(
                        f"{mask:12s} {sparsity:.0%} {storage:5s} ({batch:2d}, {tokens}): dense "
                        f"{row['dense_median_ms']:8.2f} ms  default x{row['default_speedup']:.2f}"
                        f"  forced x{row['forced_speedup']:.2f} (median; fastest: "
                        f"x{row['default_fastest_speedup']:.2f}, x{row['forced_fastest_speedup']:.2f})",
                        flush=True,
                    )
    worst = min(r["default_speedup"] for r in rows)
    print(f"default path: worst median speedup x{worst:.2f} (goal >= 0.95)")
    write_results(
        args.out,
        "serve_bert",
        rows,
        quick=args.quick,
        block=BLOCK,
        max_density=DEFAULT_MAX_DENSITY,
        model=args.model or "random MiniLM-shaped",
    )


if __name__ == "__main__":
    main()
