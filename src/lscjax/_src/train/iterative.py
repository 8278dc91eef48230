"""Han et al. (2015) iterative pruning: prune, retrain the survivors, repeat at higher sparsity."""

from collections.abc import Callable, Sequence

import optax

from lscjax._src.errors import LscError
from lscjax._src.prune.magnitude import apply, magnitude
from lscjax._src.train.masking import keep_masks
from lscjax._src.tree import Where


def iterative_prune(
    params,
    fit: Callable,
    *,
    sparsities: Sequence[float],
    optimizer: optax.GradientTransformation,
    scope: str = "global",
    where: Where = None,
):
    """Prune by magnitude to each sparsity in turn, retraining the kept weights after each step.

    Weights pruned in one round are 0.0 when the next round ranks magnitudes, so masks only shrink.

    Args:
      params: trained dense parameters.
      fit: ``fit(params, optimizer, round_index) -> params``, the retraining of one round (any
        training loop), called with `optimizer` wrapped in `keep_masks` for that round's masks;
        e.g. ``lambda p, opt, i: lscjax.models.fit(apply_fn, p, opt, images, labels,
        steps=500, seed=i)[0]``.
      sparsities: increasing target sparsities, e.g. (0.5, 0.75, 0.9).
      optimizer: the inner optimizer, wrapped in `keep_masks` for each round.
      scope, where: as for `lscjax.prune.magnitude`.

    Returns:
      (params with pruned weights exactly 0.0, masks of the last round).

    Raises:
      LscError: an empty `sparsities`.
    """
    if not sparsities:
        raise LscError("iterative_prune: sparsities must name at least one round")
    masks = None
    for round_index, sparsity in enumerate(sparsities):
        masks = magnitude(params, sparsity, scope=scope, where=where)
        params = fit(apply(params, masks), keep_masks(optimizer, masks), round_index)
    return apply(params, masks), masks
