"""Serve a compressed LeNet-5 from its LSC bytes: block-sparse 4-bit weights under jax.jit.

    python examples/serve_compressed.py                  # ~3 min on 2 cores (full data)
    python examples/serve_compressed.py --epochs 0.3 --retrain-epochs 0.1   # a smoke run

Pipeline: train LeNet-5 -> block magnitude pruning of conv2 and fc1 (16 x 16 blocks of the
kernels' matrix views, the BlockSparse layout) -> masked retraining -> 4-bit k-means (code 0 =
0.0) -> LSC bytes -> `BlockSparse.from_encoded` (blocks decoded straight to the device layout)
-> `lscjax.flax.compressed_apply(model.apply)` under jax.jit.

Prints the test accuracy of the compressed model and of the decoded dense model (the same
weights as dense arrays: they must agree), the number of differing predictions, the model
bytes, and the latency at batch 1 and 256 of: every kernel BlockSparse; "mixed", the kernels
that keep more than --max-density of their blocks (conv1 and fc2 keep all) served dense, as
``lscjax.flax.to_block_sparse(..., max_density=)`` and ``lscjax.load(..., max_density=)`` do;
and the decoded dense model.
"""

import argparse
import time

import jax
import numpy as np
import optax

import lscjax
from lscjax.sparse import BlockSparse

PRUNED = ("Conv_1/kernel", "Dense_0/kernel")


def latency_ms(calls: dict, x, reps: int) -> dict:
    """Median wall time (ms) of each jitted ``fn(params, x)`` of ``calls = {name: (fn, params)}``.

    After one compile call each, the calls take turns (one of each per round), so load drifts on
    a shared machine hit all of them alike.
    """
    for fn, params in calls.values():
        jax.block_until_ready(fn(params, x))
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, (fn, params) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params, x))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2, help="dense training epochs")
    parser.add_argument("--retrain-epochs", type=float, default=2, help="masked retraining")
    parser.add_argument("--block-sparsity", type=float, default=0.9, help="conv2 and fc1")
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument(
        "--max-density", type=float, default=0.5, help="denser kernels served dense (mixed)"
    )
    parser.add_argument("--reps", type=int, default=50, help="latency repetitions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train = lscjax.data.fashion_mnist("train")
    x_test, y_test = lscjax.data.fashion_mnist("test")
    print(f"data: {lscjax.data.data_dir()} ({len(x_train)} train / {len(x_test)} test)")
    steps_per_epoch = len(x_train) // 128

    model = lscjax.models.LeNet5()
    params, apply_fn = lscjax.models.init(model, args.seed)
    params, _ = lscjax.models.fit(
        apply_fn,
        params,
        optax.adam(1e-3),
        x_train,
        y_train,
        steps=max(1, int(args.epochs * steps_per_epoch)),
        progress=True,
    )
    dense_acc = lscjax.models.accuracy(apply_fn, params, x_test, y_test)

    masks = lscjax.prune.block_magnitude(
        params,
        args.block_sparsity,
        block=(args.block, args.block),
        where=lambda path, _: path in PRUNED,
    )
    params = lscjax.prune.apply(params, masks)
    params, _ = lscjax.models.fit(
        apply_fn,
        params,
        lscjax.train.keep_masks(optax.adam(1e-3), masks),
        x_train,
        y_train,
        steps=max(1, int(args.retrain_epochs * steps_per_epoch)),
        progress=True,
    )
    quantized = lscjax.quant.kmeans(params, args.bits)

    # To bytes and back, then straight to the device layout: no dense weight on the way.
    stored, sparse = {}, {}
    for layer, leaves in quantized.items():
        data = lscjax.coding.encode(leaves["kernel"], "lsc", block=args.block).to_bytes()
        stored[layer] = len(data) + 4 * leaves["bias"].size
        encoded = lscjax.coding.Encoded.from_bytes(data)
        sparse[layer] = {"kernel": BlockSparse.from_encoded(encoded), "bias": leaves["bias"]}
    decoded = lscjax.flax.to_dense(sparse)
    # Kernels that kept most of their blocks (here conv1 and fc2: all) are faster served dense.
    mixed = {
        layer: leaves if leaves["kernel"].block_density <= args.max_density else decoded[layer]
        for layer, leaves in sparse.items()
    }

    serve = jax.jit(lscjax.flax.compressed_apply(model.apply))
    dense = jax.jit(model.apply)
    predict_sparse = jax.jit(lambda p, x: serve({"params": p}, x).argmax(-1))
    predict_dense = jax.jit(lambda p, x: dense({"params": p}, x).argmax(-1))
    x_all = lscjax.models.prepare(x_test)
    pred_sparse = np.concatenate(
        [predict_sparse(sparse, x_all[i : i + 1000]) for i in range(0, len(x_all), 1000)]
    )
    pred_mixed = np.concatenate(
        [predict_sparse(mixed, x_all[i : i + 1000]) for i in range(0, len(x_all), 1000)]
    )
    pred_dense = np.concatenate(
        [predict_dense(decoded, x_all[i : i + 1000]) for i in range(0, len(x_all), 1000)]
    )
    acc_sparse = float(np.mean(pred_sparse == y_test))
    acc_dense = float(np.mean(pred_dense == y_test))

    print(f"\ndense trained model        test accuracy {dense_acc:.4f}")
    print(f"compressed (BlockSparse)   test accuracy {acc_sparse:.4f}")
    print(f"decoded dense weights      test accuracy {acc_dense:.4f}")
    print(f"predictions that differ: {int(np.sum(pred_sparse != pred_dense))} / {len(y_test)}")
    print(
        f"mixed (dense kernels above {args.max_density:.0%} of blocks) differ: "
        f"{int(np.sum(pred_mixed != pred_dense))} / {len(y_test)}"
    )
    dense_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params))
    device_bytes = sum(
        leaf.nbytes
        for leaf in jax.tree_util.tree_leaves(sparse, is_leaf=lambda a: isinstance(a, BlockSparse))
    )
    print(
        f"bytes: dense float32 {dense_bytes}, LSC file {sum(stored.values())}, "
        f"BlockSparse on device {device_bytes}"
    )
    for layer in sparse:
        w = sparse[layer]["kernel"]
        print(
            f"  {layer:8s} kernel {w.shape} block {w.block} bits {w.bits} "
            f"blocks kept {int(np.sum(w.counts))} Kmax {w.kmax}"
        )
    print(
        "\nlatency (ms, median of interleaved jitted calls): batch, compressed (all BlockSparse), ratio to "
        "dense, compressed (mixed), ratio, dense"
    )
    for batch in (1, 256):
        x = x_all[:batch]
        t = latency_ms(
            {
                "sparse": (serve, {"params": sparse}),
                "mixed": (serve, {"params": mixed}),
                "dense": (dense, {"params": decoded}),
            },
            x,
            args.reps,
        )
        t_sparse, t_mixed, t_dense = t["sparse"], t["mixed"], t["dense"]
        print(
            f"  {batch:4d}  {t_sparse:8.3f} {t_sparse / t_dense:6.2f}  "
            f"{t_mixed:8.3f} {t_mixed / t_dense:6.2f}  {t_dense:8.3f}"
        )
    if acc_sparse != acc_dense or np.any(pred_mixed != pred_dense):
        raise SystemExit("compressed and decoded dense predictions differ")


if __name__ == "__main__":
    main()
