"""One-shot 80% + 4-bit LeNet-5 on Fashion-MNIST from calibration images, no retraining.

    python benchmarks/ptq_lenet5.py [--steps 1500] [--quick]

Trains a dense LeNet-5 (Adam 1e-3, batch 128) on the training images `lscjax.data.fashion_mnist`
finds (the shipped 6,000 / 1,000 subset unless the full set is installed), then compresses its
four kernels to 80% sparsity overall + 4-bit codes with no retraining, each written as one .lsc
file and loaded back, and prints test accuracy beside the dense model's:

  magnitude           one-shot magnitude pruning (one threshold over the four kernels) + 4-bit
                      k-means (no data)
  sparsegpt           the "sparsegpt" recipe with one 4-bit k-means codebook per layer:
                      SparseGPT + GPTQ, layer-sequential, calibrated on the first 1,000
                      training images (no labels); the first layer (Conv_0: 500 weights, 25 per
                      output channel) kept unpruned, as is usual, the other three at the
                      sparsity that makes 80% overall
  sparsegpt_channel   the same with the recipe's default, one codebook per output channel
  wanda               the "wanda" recipe (codebook per layer), the same calibration and sparsities
  sparsegpt_uniform   "sparsegpt" (codebook per layer) with every layer at 80%, Conv_0 included

--quick: 60 training steps and 200 calibration images (a smoke test; numbers not recorded).
Writes benchmarks/results/ptq_lenet5.json.
"""

import argparse
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lscjax
from lscjax._src.loop import accuracy, fit
from lscjax.data import fashion_mnist
from lscjax.models import LeNet5, prepare

ROOT = pathlib.Path(__file__).parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "ptq_lenet5.json"
SPARSITY, BITS = 0.8, 4


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--calibration", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.calibration = 60, 200
    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("test")
    model = LeNet5()
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params, _ = fit(apply_fn, params, optax.adam(1e-3), x_train, y_train, steps=args.steps)
    dense = accuracy(apply_fn, params, x_test, y_test)
    print(f"dense {dense:.4f} ({len(y_train)} train / {len(y_test)} test images)", flush=True)
    images = x_train[: args.calibration]
    batches = [prepare(images[i : i + 250]) for i in range(0, len(images), 250)]
    cal = lscjax.Calibration(apply_fn, batches)
    fmt = dict(format="lsc", entropy="ans", bits=BITS)
    sizes = {f"{name}/kernel": layer["kernel"].size for name, layer in params.items()}
    rest = SPARSITY * sum(sizes.values()) / (sum(sizes.values()) - sizes["Conv_0/kernel"])
    first_dense = {p: 0.0 if p == "Conv_0/kernel" else rest for p in sizes}
    recipes = {
        "magnitude": (lscjax.Recipe("magnitude", sparsity=SPARSITY, **fmt), None),
        "sparsegpt": (
            lscjax.recipe("sparsegpt", sparsity=first_dense, per_channel=False, **fmt),
            cal,
        ),
        "sparsegpt_channel": (lscjax.recipe("sparsegpt", sparsity=first_dense, **fmt), cal),
        "wanda": (lscjax.recipe("wanda", sparsity=first_dense, per_channel=False, **fmt), cal),
        "sparsegpt_uniform": (
            lscjax.recipe("sparsegpt", sparsity=SPARSITY, per_channel=False, **fmt),
            cal,
        ),
    }
    rows = {"dense": {"accuracy": dense}}
    for name, (rc, calibration) in recipes.items():
        start = time.perf_counter()
        compressed = lscjax.compress(params, rc, calibration=calibration)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            size = lscjax.save(pathlib.Path(tmp) / "m.lsc", compressed)
            back = lscjax.load(pathlib.Path(tmp) / "m.lsc")
        acc = accuracy(apply_fn, back, x_test, y_test)
        kernels = [np.asarray(back[p.split("/")[0]]["kernel"]) for p in sizes]
        rows[name] = {
            "accuracy": acc,
            "drop (points)": 100 * (dense - acc),
            "sparsity": float(sum(np.sum(k == 0) for k in kernels) / sum(sizes.values())),
            "file bytes": size,
            "seconds": seconds,
        }
        print(name, json.dumps(rows[name]), flush=True)
    meta = {
        "train images": len(y_train),
        "test images": len(y_test),
        "dense steps": args.steps,
        "calibration images": len(images),
        "sparsity": SPARSITY,
        "kept dense": "Conv_0/kernel (sparsegpt, sparsegpt_channel, wanda)",
        "bits": BITS,
    }
    if not args.quick:
        RESULTS.write_text(json.dumps({"setting": meta, **rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
