"""`rdq_for_target`: the rate weight lam of `quant.rdq` that meets a size or quality target.

The rate falls and the distortion grows with lam, so a bisection on log lam between LAM_MIN
and LAM_MAX finds the lam where the target is just met; the layers' lam-independent work (the
k-means start codebooks) is done once. Sizes are measured by encoding the quantized leaves
(`coding.encode`), so they are the bytes the file stores for them.
"""

import dataclasses
import math
import numbers

import numpy as np

from lscjax._src.coding.codec import encode
from lscjax._src.errors import LscError
from lscjax._src.quant.qarray import is_qarray
from lscjax._src.quant.rdq import RDQ_INIT, prepare_all, selection_variance, solve_all
from lscjax._src.tree import Where, leaves_with_paths

LAM_MIN = 1e-8
LAM_MAX = 10.0
STEPS = 14
"""Bisection steps on log lam: LAM_MAX / LAM_MIN (30 octaves) narrowed to 30 / 2**14 octave."""


@dataclasses.dataclass(frozen=True)
class Measured:
    """Size and quality of the quantized selected leaves.

    Attributes:
      bits: encoded bits per weight (all elements of the leaves, pruned ones included).
      bytes: encoded bytes of the leaves (`Encoded.to_bytes`).
      distortion: relative MSE, ``sum ||W - Q||^2 / sum N Var(W)`` over the leaves.
    """

    bits: float
    bytes: int
    distortion: float


def measure(params, quantized, paths, *, format: str, entropy: str, options) -> Measured:
    """`Measured` of the leaves at `paths` of `quantized` (QArrays) against `params`."""
    dense = dict(leaves_with_paths(params))
    q = dict(leaves_with_paths(quantized, is_leaf=is_qarray))
    size = sum(len(encode(q[p], format, entropy=entropy, **options).to_bytes()) for p in paths)
    count = sum(int(np.size(dense[p])) for p in paths)
    error = sum(
        float(np.sum((np.asarray(q[p].dequantize()) - np.asarray(dense[p], np.float32)) ** 2))
        for p in paths
    )
    spread = count * selection_variance([(p, dense[p]) for p in paths])
    return Measured(8 * size / count, size, error / max(spread, np.finfo(np.float32).tiny))


def _check_target(bits, nbytes, distortion) -> tuple[str, float]:
    given = {"bits": bits, "bytes": nbytes, "distortion": distortion}
    chosen = {k: v for k, v in given.items() if v is not None}
    if len(chosen) != 1:
        raise LscError(f"give exactly one of bits=, bytes=, distortion=; got {sorted(chosen)}")
    ((name, value),) = chosen.items()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise LscError(f"{name}= must be a finite number > 0, got {value!r}")
    return name, float(value)


def rdq_for_target(
    params,
    *,
    bits: float | None = None,
    bytes: int | None = None,  # noqa: A002 - the target's natural name
    distortion: float | None = None,
    grid: str = "kmeans",
    max_bits: int = 8,
    weights=None,
    where: Where = None,
    format: str = "dense",  # noqa: A002 - as in lscjax.coding.encode
    entropy: str = "ans",
    format_options=None,
    init: str = RDQ_INIT,
    seed: int = 0,
    relative_to: str = "layer",
):
    """`lscjax.quant.rdq` at the lam that meets one target: a size, or a quality.

    With `bits` or `bytes`, the best quality (smallest lam) whose encoded selected leaves fit;
    with `distortion`, the smallest encoding (largest lam) whose relative MSE stays within it.
    lam is found by bisection on log lam in [LAM_MIN, LAM_MAX] (STEPS steps); lam = 0 (plain
    k-means / round-to-nearest with ``2**max_bits`` codes) when it already fits a size target.

    Args:
      params: pytree of float arrays.
      bits: target encoded bits per weight of the selected leaves (all their elements).
      bytes: target encoded bytes of the selected leaves (their `Encoded.to_bytes`; a file adds
        its unselected leaves and headers).
      distortion: target relative MSE, ``sum ||W - Q||^2 / sum N Var(W)`` over the selected
        leaves (N: each leaf's size).
      grid, max_bits, weights, where, init, seed, relative_to: as in `lscjax.quant.rdq`
        ("selection": the fewest bits for the selection's total distortion, the measure of
        every target here).
      format, entropy, format_options: how the leaves are encoded to measure their size (as in
        `lscjax.coding.encode`; "dense" suits unpruned layers, "lsc" pruned ones).

    Returns:
      (quantized params, lam): the params with a QArray at every selected leaf, and the lam
      that made them.

    Raises:
      LscError (a ValueError): not exactly one target, or one that is not a number > 0; a
        target that no lam meets (too few bytes even at LAM_MAX, or a distortion below what
        ``2**max_bits`` codes reach); the arguments `lscjax.quant.rdq` refuses.

    Example:
      >>> q, lam = lscjax.quant.rdq_for_target(params, bits=3.0)
    """
    name, target = _check_target(bits, bytes, distortion)
    layers = prepare_all(
        params,
        grid=grid,
        max_bits=max_bits,
        weights=weights,
        where=where,
        init=init,
        seed=seed,
        relative_to=relative_to,
    )
    options = dict(format_options or {})
    paths = list(layers)

    def run(lam: float):
        q = solve_all(params, layers, lam)
        m = measure(params, q, paths, format=format, entropy=entropy, options=options)
        return q, getattr(m, name) <= target

    size_target = name != "distortion"
    first, fits = run(0.0)
    if size_target and fits:
        return first, 0.0
    if not size_target and not fits:
        raise LscError(
            f"distortion={target} is below what {2**max_bits} codes reach; raise max_bits"
        )
    last, fits = run(LAM_MAX)
    if size_target and not fits:
        raise LscError(f"{name}={target} cannot be met: too small even at lam = {LAM_MAX}")
    if not size_target and fits:
        return last, LAM_MAX
    # `good` meets the target, `bad` does not; size: good is the larger lam, else the smaller.
    good, bad = (LAM_MAX, LAM_MIN) if size_target else (LAM_MIN, LAM_MAX)
    best, best_lam = (last, LAM_MAX) if size_target else (first, 0.0)
    for _ in range(STEPS):
        mid = math.sqrt(good * bad)
        q, fits = run(mid)
        if fits:
            good, best, best_lam = mid, q, mid
        else:
            bad = mid
    return best, best_lam
