"""Han et al. (2015) on Fashion-MNIST: train LeNet-300-100, prune iteratively, retrain masked.

    python examples/prune_lenet.py                 # full data when installed (~2 min on 2 cores)
    python examples/prune_lenet.py --epochs 1 --retrain-epochs 0.2   # a quick smoke run

Prints dense and pruned test accuracy and the per-layer sparsity table.
"""

import argparse

import optax

import lscjax
from lscjax._src.report import sparsity_table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=10, help="dense training epochs")
    parser.add_argument("--retrain-epochs", type=float, default=2, help="epochs per pruning round")
    parser.add_argument(
        "--final-epochs", type=float, default=6, help="masked retraining at the end"
    )
    parser.add_argument("--sparsities", default="0.5,0.75,0.85,0.9,0.92")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train = lscjax.data.fashion_mnist("train")
    x_test, y_test = lscjax.data.fashion_mnist("test")
    print(f"data: {lscjax.data.data_dir()} ({len(x_train)} train / {len(x_test)} test)")
    steps_per_epoch = len(x_train) // args.batch_size

    def steps(epochs):
        return max(1, int(epochs * steps_per_epoch))

    model = lscjax.models.LeNet300()
    params, apply_fn = lscjax.models.init(model, args.seed)
    common = dict(batch_size=args.batch_size, progress=True)
    params, _ = lscjax.models.fit(
        apply_fn, params, optax.adam(1e-3), x_train, y_train, steps=steps(args.epochs), **common
    )
    dense_acc = lscjax.models.accuracy(apply_fn, params, x_test, y_test)

    sparsities = [float(s) for s in args.sparsities.split(",")]

    # Han et al.: retrain with a lower learning rate, from the surviving weights.
    def retrain(params, optimizer, round_index):
        steps_per_round = steps(args.retrain_epochs)
        seed = args.seed + round_index + 1
        return lscjax.models.fit(
            apply_fn,
            params,
            optimizer,
            x_train,
            y_train,
            steps=steps_per_round,
            seed=seed,
            **common,
        )[0]

    params, masks = lscjax.train.iterative_prune(
        params, retrain, sparsities=sparsities, optimizer=optax.adam(3e-4)
    )
    params, _ = lscjax.models.fit(
        apply_fn,
        params,
        lscjax.train.keep_masks(optax.adam(1e-4), masks),
        x_train,
        y_train,
        steps=steps(args.final_epochs),
        seed=args.seed + 100,
        **common,
    )
    pruned_acc = lscjax.models.accuracy(apply_fn, params, x_test, y_test)
    print(sparsity_table(params))
    print(f"dense test accuracy:  {100 * dense_acc:.2f}%")
    print(
        f"pruned test accuracy: {100 * pruned_acc:.2f}%  (drop {100 * (dense_acc - pruned_acc):.2f} points)"
    )


if __name__ == "__main__":
    main()
