"""Han et al. (2015) iterative pruning: prune, retrain the survivors, repeat at higher sparsity."""

from collections.abc import Callable, Sequence

import optax

from lscjax._src.loop import fit
from lscjax._src.prune.magnitude import apply, magnitude
from lscjax._src.train.masking import keep_masks
from lscjax._src.tree import Where


def iterative_prune(
    apply_fn: Callable,
    params,
    images,
    labels,
    *,
    sparsities: Sequence[float],
    steps_per_round: int,
    optimizer: optax.GradientTransformation,
    scope: str = "global",
    where: Where = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
):
    """Prune by magnitude to each sparsity in turn, retraining the kept weights after each step.

    Weights pruned in one round are 0.0 when the next round ranks magnitudes, so masks only shrink.

    Args:
      apply_fn, images, labels, batch_size, seed, progress: as for `lscjax.models.fit`.
      params: trained dense parameters.
      sparsities: increasing target sparsities, e.g. (0.5, 0.75, 0.9).
      steps_per_round: retraining steps after each pruning step.
      optimizer: the inner optimizer, wrapped in `keep_masks` for each round.
      scope, where: as for `lscjax.prune.magnitude`.

    Returns:
      (params with pruned weights exactly 0.0, masks of the last round).
    """
    masks = None
    for round_index, sparsity in enumerate(sparsities):
        masks = magnitude(params, sparsity, scope=scope, where=where)
        params = apply(params, masks)
        params, _ = fit(
            apply_fn,
            params,
            keep_masks(optimizer, masks),
            images,
            labels,
            steps=steps_per_round,
            batch_size=batch_size,
            seed=seed + round_index + 1,
            progress=progress,
        )
    return params, masks
