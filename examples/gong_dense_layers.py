"""Gong et al. (2014) on Fashion-MNIST LeNet-300-100's dense layers: compression vs accuracy.

Trains LeNet-300-100, then quantizes its three dense kernels with binarization, scalar k-means,
product quantization and residual quantization (per weight, and on sub-vectors as in the paper)
at several k, without retraining (as in the paper), and prints the compression ratio of the kernels (32-bit dense bits over code bits +
32-bit codebooks) against the test-accuracy drop.

    python examples/gong_dense_layers.py                 # full data (~3 min on 2 cores)
    python examples/gong_dense_layers.py --epochs 0.2    # a quick smoke run
"""

import argparse

import optax

import lscjax


def settings():
    """(method, setting, quantizer) triples: params -> QArray params."""
    q = lscjax.quant
    out = [
        ("binarize", f"scale={s}", lambda p, s=s: q.binarize(p, scale=s)) for s in ("layer", "row")
    ]
    out += [("kmeans", f"k={2**b}", lambda p, b=b: q.kmeans(p, b)) for b in (1, 2, 3, 4, 6, 8)]
    out += [
        ("product", f"k={k}, sub_dim={d}", lambda p, k=k, d=d: q.product(p, k, d))
        for d in (2, 5)
        for k in (16, 64, 256)
    ]
    out += [
        ("residual", f"k={k}, stages={t}", lambda p, k=k, t=t: q.residual(p, k, t))
        for k in (2, 4)
        for t in (1, 2, 3)
    ]
    out += [
        (
            "residual (vectors)",
            f"k={k}, stages={t}, sub_dim={d}",
            lambda p, k=k, t=t, d=d: q.residual(p, k, t, sub_dim=d),
        )
        for d in (2, 5)
        for k in (16, 64)
        for t in (1, 2)
    ]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=4, help="dense training epochs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train = lscjax.data.fashion_mnist("train")
    x_test, y_test = lscjax.data.fashion_mnist("test")
    print(f"data: {lscjax.data.data_dir()} ({len(y_train)} train / {len(y_test)} test)")
    model = lscjax.models.LeNet300()
    params, apply_fn = lscjax.models.init(model, args.seed)
    steps = max(1, int(args.epochs * len(y_train) // args.batch_size))
    params, _ = lscjax.models.fit(
        apply_fn,
        params,
        optax.adam(1e-3),
        x_train,
        y_train,
        steps=steps,
        batch_size=args.batch_size,
    )
    dense_acc = lscjax.models.accuracy(apply_fn, params, x_test, y_test)
    dense_bits = 32 * sum(n for _, n in lscjax.prune.count_params(params).values())

    print(f"dense test accuracy: {100 * dense_acc:.2f}% ({dense_bits // 32} kernel weights)\n")
    print("| method | setting | bits/weight | compression | accuracy | drop (points) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, setting, quantize in settings():
        quantized = quantize(params)
        bits = sum(lscjax.quant.storage_bits(quantized).values())
        acc = lscjax.models.accuracy(apply_fn, lscjax.quant.dequantize(quantized), x_test, y_test)
        print(
            f"| {method} | {setting} | {bits / (dense_bits / 32):.3f} | {dense_bits / bits:.1f}x "
            f"| {100 * acc:.2f}% | {100 * (dense_acc - acc):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
