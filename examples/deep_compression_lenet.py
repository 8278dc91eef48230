"""Deep Compression (Han, Mao, Dally 2016) on Fashion-MNIST LeNet-300-100 and LeNet-5.

prune + masked retraining -> per-layer k-means (8-bit conv, 5-bit fc) -> centroid fine-tuning ->
relative-index (RI) storage, then Huffman coding of the codes and of the index gaps.

    python examples/deep_compression_lenet.py                      # full data (~8 CPU minutes)
    python examples/deep_compression_lenet.py --epochs 0.2 --retrain-epochs 0.1 \\
        --finetune-epochs 0.1 --models lenet300                    # a quick smoke run

Prints, per model, the accuracy after each stage and a per-layer table in the layout of Deep
Compression's LeNet tables (kept %, weight bits, index bits, rate for P+Q and +H).
"""

import argparse

import jax
import numpy as np
import optax

import lscjax

# Deep Compression's per-layer kept fractions (Han et al. 2015 / 2016, MNIST LeNets).
KEPT = {
    "lenet300": {"Dense_0/kernel": 0.08, "Dense_1/kernel": 0.09, "Dense_2/kernel": 0.26},
    "lenet5": {
        "Conv_0/kernel": 0.66,
        "Conv_1/kernel": 0.12,
        "Dense_0/kernel": 0.08,
        "Dense_1/kernel": 0.19,
    },
}
MODELS = {"lenet300": lscjax.models.LeNet300, "lenet5": lscjax.models.LeNet5}
RI_INDEX_BITS = 5  # Deep Compression's LeNet experiments: 5-bit relative indices


def bits_per_layer(kept: dict) -> dict:
    """8 bits for conv kernels (4-D), 5 for fc, as in the paper's LeNet experiments."""
    return {path: 8 if path.startswith("Conv") else 5 for path in kept}


def layer_masks(params, sparsity_by_path: dict):
    """Magnitude masks with a different sparsity per layer: {path: sparsity} -> masks pytree."""
    per_layer = [
        lscjax.prune.magnitude(params, sparsity, where=lambda p, _, q=path: p == q)
        for path, sparsity in sparsity_by_path.items()
    ]
    return jax.tree_util.tree_map(
        lambda *ms: next((m for m in ms if m is not None), None),
        *per_layer,
        is_leaf=lambda x: x is None,
    )


def run(name: str, args, data) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    steps_per_epoch = len(x_train) // args.batch_size

    def steps(epochs):
        return max(1, int(epochs * steps_per_epoch))

    model = MODELS[name]()
    params, apply_fn = lscjax.models.init(model, args.seed)
    common = dict(batch_size=args.batch_size, progress=args.progress)

    def fit(params, optimizer, epochs, seed):
        return lscjax.models.fit(
            apply_fn, params, optimizer, x_train, y_train, steps=steps(epochs), seed=seed, **common
        )

    def acc(params):
        return lscjax.models.accuracy(apply_fn, params, x_test, y_test)

    params, _ = fit(params, optax.adam(1e-3), args.epochs, args.seed)
    accs = {"dense": acc(params)}

    # Pruning: three rounds towards the per-layer targets, masked retraining after each.
    kept = KEPT[name]
    for round_index, fraction in enumerate((0.6, 0.85, 1.0)):
        masks = layer_masks(params, {p: fraction * (1 - k) for p, k in kept.items()})
        params = lscjax.prune.apply(params, masks)
        opt = lscjax.train.keep_masks(optax.adam(3e-4), masks)
        params, _ = fit(params, opt, args.retrain_epochs, args.seed + 1 + round_index)
    accs["pruned"] = acc(params)

    # Trained quantization: k-means per layer (linear init), then centroid fine-tuning.
    quantized = lscjax.quant.kmeans(params, bits_per_layer(kept), init="linear")
    dense_q = lscjax.quant.dequantize(quantized)
    accs["quantized"] = acc(dense_q)
    opt = lscjax.train.shared_centroids(optax.adam(1e-4), quantized)
    dense_q, state = fit(dense_q, opt, args.finetune_epochs, args.seed + 10)
    quantized = lscjax.train.quantized_params(dense_q, state)
    accs["fine-tuned"] = acc(lscjax.quant.dequantize(quantized))

    # Storage: relative indices (5-bit gaps) for P+Q, then Huffman coding for +H.
    rows, decoded = [], dense_q  # biases: the fine-tuned ones; kernels: decoded from bytes
    for path in kept:
        q = _leaf(quantized, path)
        plain = lscjax.coding.encode(q, "ri", entropy="none", k=RI_INDEX_BITS)
        huffman = lscjax.coding.encode(q, "ri", entropy="huffman", k=RI_INDEX_BITS)
        decoded = _replace(decoded, path, lscjax.coding.decode_qarray(huffman).dequantize())
        rows.append(storage_row(path, q, plain, huffman))
    accs["from +H bytes"] = acc(decoded)
    return {"accuracy": accs, "rows": rows}


def _leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _replace(tree, path, value):
    head, _, rest = path.partition("/")
    return {**tree, head: _replace(tree[head], rest, value) if rest else value}


def storage_row(path, q, plain, huffman) -> dict:
    """One layer's row of Deep Compression's table from the codec's accounting.

    entries = stored RI entries (non-zeros + filler zeros); weight bits = value bits per entry;
    index bits = the other bits (gaps, shape, Huffman tables, padding) per entry, codebook
    excluded; rate = all bits including the 32-bit codebook over 32 bits per dense weight.
    """
    n = int(np.prod(q.shape))
    entries = plain.value_bits // q.bits
    row = {
        "layer": path,
        "weights": n,
        "kept": int(np.count_nonzero(np.asarray(q.codes))) / n,
        "entries": entries,
    }
    for tag, enc in (("P+Q", plain), ("+H", huffman)):
        row[f"w bits {tag}"] = enc.value_bits / entries
        row[f"idx bits {tag}"] = (enc.index_bits - q.codebook_bits) / entries
        row[f"bits {tag}"] = enc.value_bits + enc.index_bits
        row[f"rate {tag}"] = (enc.value_bits + enc.index_bits) / (32 * n)
    return row


def markdown_table(rows) -> str:
    """Deep Compression's LeNet table layout, plus a total row (kernels only)."""
    lines = [
        "| layer | weights | kept | w bits P+Q / +H | idx bits P+Q / +H | rate P+Q / +H |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['weights']} | {100 * r['kept']:.1f}% "
            f"| {r['w bits P+Q']:.0f} / {r['w bits +H']:.2f} "
            f"| {r['idx bits P+Q']:.2f} / {r['idx bits +H']:.2f} "
            f"| {100 * r['rate P+Q']:.2f}% / {100 * r['rate +H']:.2f}% |"
        )
    n = sum(r["weights"] for r in rows)
    kept = sum(r["kept"] * r["weights"] for r in rows)
    pq, h = sum(r["bits P+Q"] for r in rows), sum(r["bits +H"] for r in rows)
    lines.append(
        f"| total | {n} | {100 * kept / n:.1f}% | | | {100 * pq / (32 * n):.2f}% / "
        f"{100 * h / (32 * n):.2f}% ({32 * n / pq:.1f}x / {32 * n / h:.1f}x) |"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--epochs", type=float, default=4, help="dense training epochs")
    parser.add_argument("--retrain-epochs", type=float, default=1.5, help="per pruning round")
    parser.add_argument("--finetune-epochs", type=float, default=1, help="centroid fine-tuning")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    data = lscjax.data.fashion_mnist("train"), lscjax.data.fashion_mnist("test")
    print(f"data: {lscjax.data.data_dir()} ({len(data[0][1])} train / {len(data[1][1])} test)")
    for name in args.models.split(","):
        result = run(name, args, data)
        accs = result["accuracy"]
        print(f"\n## {name}")
        for stage, a in accs.items():
            print(f"{stage:>13}: {100 * a:.2f}%  (drop {100 * (accs['dense'] - a):+.2f} points)")
        print(markdown_table(result["rows"]))


if __name__ == "__main__":
    main()
