"""Pruning methods compared on LeNet-5 / Fashion-MNIST: weights and FLOPs kept, accuracy before and
after retraining, ADMM against magnitude pruning at the ADMM paper's per-layer densities, and a
per-layer sensitivity table.

The official ADMM schedule (pretrain 20k steps, 30 ADMM iterations x 5k steps, retrain 20k) is far
beyond a 2-core CPU; this script scales it down (defaults, batch 128: pretrain 800 steps, 5 ADMM
iterations x 200 steps with rho doubling each iteration, retrain 300 steps for every method).

    python examples/prune_methods_lenet5.py [--pretrain 800] [--retrain 300] [--quick]
"""

import argparse
import time
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lscjax import prune, train
from lscjax._src.loop import accuracy, fit
from lscjax.data import fashion_mnist
from lscjax.models import LeNet5, prepare

# Output positions per layer (multiply-accumulates = positions x non-zero weights).
POSITIONS = {"Conv_0": 24 * 24, "Conv_1": 8 * 8, "Dense_0": 1, "Dense_1": 1}
ADMM_KEEP = {"Conv_0": 0.20, "Conv_1": 0.08, "Dense_0": 0.009, "Dense_1": 0.07}
ADMM_SPARSITY = {f"{layer}/kernel": 1.0 - d for layer, d in ADMM_KEEP.items()}
# Conv_0 -> pool -> Conv_1 -> pool -> flatten (4 x 4 x 50) -> Dense_0 -> Dense_1.
CONSUMERS = {"Conv_0": "Conv_1", "Conv_1": "Dense_0", "Dense_0": "Dense_1"}


class LeNet5Features(nn.Module):
    """LeNet-5 with configurable widths, the thinned model's definition (same param paths)."""

    features: tuple[int, int, int] = (20, 50, 500)

    @nn.compact
    def __call__(self, x):
        c0, c1, f0 = self.features
        x = nn.relu(nn.Conv(c0, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(c1, (5, 5), padding="VALID")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(f0)(x))
        return nn.Dense(10)(x)


def apply_fn(model):
    return lambda p, x: model.apply({"params": p}, x)


def cost(params) -> tuple[int, int]:
    """(non-zero kernel weights, multiply-accumulates per image)."""
    weights = macs = 0
    for layer, positions in POSITIONS.items():
        nnz = int(np.count_nonzero(np.asarray(params[layer]["kernel"])))
        weights += nnz
        macs += positions * nnz
    return weights, macs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=int, default=800)
    parser.add_argument("--retrain", type=int, default=300)
    parser.add_argument("--admm-iterations", type=int, default=5)
    parser.add_argument("--admm-every", type=int, default=200)
    parser.add_argument("--rho", type=float, default=3e-3)
    parser.add_argument("--dense-cache", help="msgpack file to reuse the pretrained dense params")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["admm", "structured", "unstructured", "sensitivity"],
        choices=["admm", "structured", "unstructured", "sensitivity"],
    )
    args = parser.parse_args()
    if args.quick:
        args.pretrain, args.retrain, args.admm_iterations, args.admm_every = 60, 20, 2, 20

    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    model = LeNet5()
    dense_fn = apply_fn(model)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    t0 = time.time()
    cache = Path(args.dense_cache) if args.dense_cache else None
    if cache is not None and cache.exists():
        params = flax.serialization.from_bytes(params, cache.read_bytes())
    else:
        params, _ = fit(dense_fn, params, optax.adam(1e-3), x_train, y_train, steps=args.pretrain)
        if cache is not None:
            cache.write_bytes(flax.serialization.to_bytes(params))
    dense_acc = accuracy(dense_fn, params, x_test, y_test)
    dense_w, dense_macs = cost(params)
    print(f"dense: {dense_acc:.4f} ({args.pretrain} steps, {time.time() - t0:.0f}s)", flush=True)

    rows = []

    def evaluate(name, fn, pruned, retrain_opt, note=""):
        before = accuracy(fn, pruned, x_test, y_test)
        retrained, _ = fit(fn, pruned, retrain_opt, x_train, y_train, steps=args.retrain, seed=1)
        after = accuracy(fn, retrained, x_test, y_test)
        w, macs = cost(retrained)
        rows.append((name, w / dense_w, macs / dense_macs, before, after, note))
        print(
            f"{name}: weights {w / dense_w:.2%} flops {macs / dense_macs:.2%} "
            f"before {before:.4f} after {after:.4f} {note}",
            flush=True,
        )

    def masked(name, pruned_from, masks, note=""):
        evaluate(
            name,
            dense_fn,
            prune.apply(pruned_from, masks),
            train.keep_masks(optax.adam(1e-3), masks),
            note,
        )

    admm_steps = args.admm_iterations * args.admm_every
    if "admm" in args.parts:
        # Magnitude pruning at the ADMM densities against ADMM.
        magnitude_masks = prune.distributed_magnitude(params, ADMM_SPARSITY)
        masked("magnitude (ADMM densities)", params, magnitude_masks)
        rho = lambda count: args.rho * 2.0 ** (count // args.admm_every)  # noqa: E731
        opt = train.admm(optax.adam(1e-3), ADMM_SPARSITY, rho=rho, every=args.admm_every)
        admm_params, admm_state = fit(
            dense_fn, params, opt, x_train, y_train, steps=admm_steps, seed=2
        )
        masked(
            "ADMM",
            admm_params,
            train.admm_masks(admm_state),
            f"{args.admm_iterations} x {args.admm_every} ADMM steps",
        )
        long_params, _ = fit(
            dense_fn,
            prune.apply(params, magnitude_masks),
            train.keep_masks(optax.adam(1e-3), magnitude_masks),
            x_train,
            y_train,
            steps=admm_steps,
        )
        masked(
            "magnitude (ADMM densities), longer retrain",
            long_params,
            magnitude_masks,
            f"{admm_steps} masked steps before the common retrain",
        )
    if "structured" in args.parts:
        # Structured: channel masks, thinned, then retrained as a smaller dense model.
        batches = [prepare(x_train[i : i + 500]) for i in range(0, 2000, 500)]
        layers = ["Conv_0", "Conv_1", "Dense_0"]

        def thinned(name, base, channel_masks, note=""):
            small = prune.thin(base, channel_masks, consumers=CONSUMERS)
            small_model = LeNet5Features(tuple(small.features[k] for k in layers))
            evaluate(name, apply_fn(small_model), small.params, optax.adam(1e-3), note)

        half = {f"{k}/kernel": 0.5 for k in layers}
        thinned(
            "L1 filters, 50%", params, prune.l1_filters(params, half, where=lambda p, _: p in half)
        )
        acts = prune.collect_activations(model, {"params": params}, batches, layers=layers)
        apoz_masks = prune.apoz({k: jax.nn.relu(acts[k].outputs) for k in layers})
        thinned("APoZ (mean + std)", params, apoz_masks)
        # Hu et al.'s iteration: trim the layer of the highest mean APoZ (over its live
        # channels), retrain with the trimmed channels held at zero, measure again.
        current = params
        kept = {k: np.ones(params[k]["kernel"].shape[-1], bool) for k in layers}
        todo, between = list(layers), args.retrain // len(layers)
        while todo:
            acts = prune.collect_activations(model, {"params": current}, batches, layers=todo)
            relu = {k: jax.nn.relu(acts[k].outputs) for k in todo}
            mean_apoz = {
                k: float(np.mean(np.asarray(prune.apoz_scores(relu[k]))[kept[k]])) for k in todo
            }
            layer = max(todo, key=mean_apoz.get)
            kept[layer] = prune.apoz({layer: relu[layer]}, kept=kept)[layer]
            todo.remove(layer)
            masks = prune.weight_masks(current, kept)
            current, _ = fit(
                dense_fn,
                prune.apply(current, masks),
                train.keep_masks(optax.adam(1e-3), masks),
                x_train,
                y_train,
                steps=between,
                seed=4 + len(todo),
            )
        thinned(
            "APoZ iterative (Hu et al.)",
            current,
            kept,
            f"layer by layer, {between} masked steps after each layer",
        )
        for name, method in (("channel LASSO", prune.channel_lasso), ("ThiNet", prune.thinet)):
            current, masks = params, {}
            for layer in layers:  # layer by layer, each on the already-pruned model's activations
                consumer = CONSUMERS[layer]
                acts = prune.collect_activations(
                    model, {"params": current}, batches, layers=[consumer]
                )
                c = current[layer]["kernel"].shape[-1]
                pick = method(
                    acts[consumer].inputs, current[consumer]["kernel"], c // 2, channels=c
                )
                masks[layer] = pick.mask
                current = prune.apply(current, prune.weight_masks(current, {layer: pick.mask}))
                current = {**current, consumer: {**current[consumer], "kernel": pick.kernel}}
            thinned(f"{name}, 50%", current, masks, "with least-squares refit")

    if "unstructured" in args.parts:  # gradual (Zhu & Gupta), block, N:M
        schedule = train.polynomial(0.0, 0.9, begin=0, end=admm_steps // 2, frequency=50)
        opt = train.gradual(optax.adam(1e-3), schedule, distribution=ADMM_SPARSITY)
        grad_params, grad_state = fit(
            dense_fn, params, opt, x_train, y_train, steps=admm_steps, seed=3
        )
        masked(
            "gradual (Zhu & Gupta, ADMM densities)",
            grad_params,
            grad_state.masks,
            f"{admm_steps} steps, polynomial over the first half",
        )
        masked("block 4x4 (l2), 80%", params, prune.block_magnitude(params, 0.8, block=(4, 4)))
        nm_where = lambda path, w: path in ("Conv_1/kernel", "Dense_0/kernel", "Dense_1/kernel")  # noqa: E731
        masked("2:4 (Conv_1, Dense_*)", params, prune.n_of_m(params, 2, 4, where=nm_where))

    print("\n## LeNet-5 on Fashion-MNIST: pruning methods\n")
    print(
        f"Dense: test accuracy {dense_acc:.4f}, {dense_w} weights, {dense_macs} MACs per image.\n"
    )
    print(
        "| method | weights kept | FLOPs kept | acc. before retrain | acc. after retrain | note |"
    )
    print("|---|---|---|---|---|---|")
    for name, w, f, b, a, note in rows:
        print(f"| {name} | {w:.2%} | {f:.2%} | {b:.4f} | {a:.4f} | {note} |")

    if "sensitivity" in args.parts:
        test_subset = (x_test[:2000], y_test[:2000])
        table = prune.sensitivity(
            lambda p: accuracy(dense_fn, p, *test_subset), params, [0.5, 0.8, 0.9, 0.95, 0.99]
        )
        print("\n## LeNet-5 on Fashion-MNIST: sensitivity (2,000 test images, one layer pruned)\n")
        print(prune.sensitivity_table(table))


if __name__ == "__main__":
    main()
