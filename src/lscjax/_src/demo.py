"""`lscjax demo`: the main job on the embedded Fashion-MNIST subset, in a few minutes on 2 cores.

Train LeNet-5, compress it with the "lsc" recipe (pruning, masked retraining, k-means, centroid
fine-tuning, Layerwise Sparse Coding + rANS), save the .lsc file, load it back as BlockSparse
kernels and serve it with `compressed_apply` under jit.
"""

import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax

from lscjax._src.compress import Retrain, recipe
from lscjax._src.compress import compress as compress_params
from lscjax._src.compressed import load, save
from lscjax._src.data import EMBEDDED_DIR, fashion_mnist
from lscjax._src.errors import LscError
from lscjax._src.flax.linen import compressed_apply
from lscjax._src.loop import accuracy, classifier_loss, fit
from lscjax._src.models import LeNet5, LeNet300, init, prepare
from lscjax._src.report import format_storage_report, storage_report

BATCH = 64


def batches(images, labels, *, batch_size: int = BATCH, seed: int = 0):
    """An endless stream of shuffled (x float32 [B, 28, 28, 1], y int32 [B]) minibatches."""
    rng = np.random.default_rng(seed)
    x_all = np.asarray(prepare(images))
    while True:
        order = rng.permutation(len(labels))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield x_all[idx], labels[idx]


MODELS = {"lenet5": LeNet5, "lenet300": LeNet300}


def run_demo(
    *,
    model: str = "lenet5",
    recipe_name: str = "lsc",
    epochs: float = 4,
    retrain_epochs: float = 2,
    sparsity: float | None = None,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict:
    """Train, compress, save, reload and serve a LeNet; print the per-layer table and totals.

    Args:
      model: "lenet5" or "lenet300".
      recipe_name: "lsc" or "deep_compression".
      epochs: dense training epochs.
      retrain_epochs: epochs of each retraining stage (after pruning, after quantization).
      sparsity: the overall sparsity (None: the recipe's).
      data: a folder with Fashion-MNIST IDX files; None uses the subset shipped in the package.
      out: the .lsc file to write (default: a temporary file, removed afterwards).
      quiet: no progress bars.

    Returns:
      {"dense_accuracy", "compressed_accuracy" (fractions), "file_bytes", "file_ratio",
      "weights_ratio"}.
    """
    folder = EMBEDDED_DIR if data is None else Path(data)
    x_train, y_train = fashion_mnist("train", path=folder)
    x_test, y_test = fashion_mnist("test", path=folder)
    print(f"data: {folder} ({len(x_train)} train / {len(x_test)} test images)")
    steps_per_epoch = max(1, len(x_train) // BATCH)
    if model not in MODELS:
        raise LscError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    name, model = model, MODELS[model]()
    params, apply_fn = init(model, 0)
    started = time.perf_counter()
    params, _ = fit(
        apply_fn,
        params,
        optax.adam(1e-3),
        x_train,
        y_train,
        steps=int(epochs * steps_per_epoch),
        batch_size=BATCH,
        progress=not quiet,
    )
    dense_acc = accuracy(apply_fn, params, x_test, y_test)
    print(
        f"dense {name}: test accuracy {100 * dense_acc:.2f}% ({time.perf_counter() - started:.0f} s)"
    )

    retrain = Retrain(
        classifier_loss(apply_fn),
        batches(x_train, y_train),
        steps=int(retrain_epochs * steps_per_epoch),
        optimizer=optax.adam(5e-4),
    )
    changes = {} if sparsity is None else {"sparsity": sparsity}
    compressed = compress_params(
        params, recipe(recipe_name, **changes), retrain=retrain, progress=not quiet
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out) if out is not None else Path(tmp) / f"{name}.lsc"
        file_bytes = save(path, compressed)
        served = load(path, layout="block_sparse")
        if out is not None:
            print(f"wrote {path}")
    serve = jax.jit(compressed_apply(model.apply))
    compressed_acc = accuracy(lambda p, x: serve({"params": p}, x), served, x_test, y_test)
    report = storage_report(compressed, file_bytes=file_bytes)
    print(format_storage_report(report))
    total = report["total"]
    print(
        f"test accuracy: dense {100 * dense_acc:.2f}% -> compressed {100 * compressed_acc:.2f}% "
        f"(served from BlockSparse kernels; {time.perf_counter() - started:.0f} s in all)"
    )
    return {
        "model": name,
        "recipe": recipe_name,
        "dense_accuracy": dense_acc,
        "compressed_accuracy": compressed_acc,
        "file_bytes": file_bytes,
        "file_ratio": total["file_ratio"],
        "weights_ratio": total["weights_ratio"],
    }
