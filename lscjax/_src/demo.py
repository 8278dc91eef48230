"""`lscjax demo`: the main job on the embedded Fashion-MNIST subset, in a few minutes on 2 cores."""

import jax
import numpy as np
import optax

from lscjax._src.data import EMBEDDED_DIR, fashion_mnist
from lscjax._src.loop import accuracy, fit
from lscjax._src.models import LeNet5
from lscjax._src.report import sparsity_table
from lscjax._src.train.iterative import iterative_prune
from lscjax._src.train.masking import keep_masks

BATCH = 64


def run_demo(*, epochs: float = 4, data=None, out=None, quiet: bool = False) -> dict:
    """Train LeNet-5, prune it iteratively to 90% sparsity, retrain, and print the results.

    Args:
      epochs: dense training epochs.
      data: a folder with Fashion-MNIST IDX files; None uses the subset shipped in the package.
      out: unused until the file stage lands.
      quiet: no progress bars.

    Returns:
      {"dense_accuracy": float, "compressed_accuracy": float} (fractions in [0, 1]).
    """
    folder = EMBEDDED_DIR if data is None else data
    x_train, y_train = fashion_mnist("train", path=folder)
    x_test, y_test = fashion_mnist("test", path=folder)
    print(f"data: {folder} ({len(x_train)} train / {len(x_test)} test images)")
    steps_per_epoch = max(1, len(x_train) // BATCH)
    model = LeNet5()
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))["params"]
    common = dict(batch_size=BATCH, progress=not quiet)
    params, _ = fit(
        apply_fn,
        params,
        optax.adam(1e-3),
        x_train,
        y_train,
        steps=int(epochs * steps_per_epoch),
        **common,
    )
    dense_acc = accuracy(apply_fn, params, x_test, y_test)
    print(f"dense LeNet-5 test accuracy: {100 * dense_acc:.2f}%")
    params, masks = iterative_prune(
        apply_fn,
        params,
        x_train,
        y_train,
        sparsities=(0.6, 0.8, 0.9),
        steps_per_round=steps_per_epoch,
        optimizer=optax.adam(5e-4),
        **common,
    )
    params, _ = fit(
        apply_fn,
        params,
        keep_masks(optax.adam(2e-4), masks),
        x_train,
        y_train,
        steps=2 * steps_per_epoch,
        **common,
    )
    pruned_acc = accuracy(apply_fn, params, x_test, y_test)
    print(sparsity_table(params))
    print(f"pruned LeNet-5 test accuracy: {100 * pruned_acc:.2f}% (dense {100 * dense_acc:.2f}%)")
    return {"dense_accuracy": dense_acc, "compressed_accuracy": pruned_acc}
