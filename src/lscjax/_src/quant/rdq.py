"""Rate-distortion optimised quantization: each layer minimises D / Var(W) + lam x R.

D is the layer's mean squared weight error (weighted by per-weight importance when given), Var(W)
the variance of its weights (with ``relative_to="selection"``, the variance of all selected
weights, one for every layer) and R the bits per weight that the rANS stage pays for its codes:
``-log2 p`` of each code under the static model fitted to the codes' histogram (`ans_model`,
the coder's own model). Pruned zeros keep code 0 = exactly 0.0 and are not coded (the sparse
formats store their positions in the index), so the rate is counted over the non-zero weights,
and non-zero weights never take code 0. `lam` is scale-free: it trades relative distortion
for bits per weight.

Relative to each layer's own variance, one lam spends bits alike on layers of different scales.
Relative to the selection's, one lam is one slope of absolute squared error against bits for
every layer: the layers then jointly minimise the selection's total squared error + lam' x its
total bits, the allocation that meets a whole-model size or weight-MSE target with the fewest
bits (docs/results/rate.md measures the difference).

* grid="kmeans": entropy-constrained scalar quantization (Chou, Lookabaugh & Gray 1989): Lloyd's
  iterations with the rate in the assignment (each weight to the code minimising
  ``d + lam * length``), the centroids moved to the (weighted) means and the code lengths
  re-estimated from the counts; a code that loses all its weights is dropped. It starts from the
  k-means codebook of ``2**max_bits`` entries (`kmeans.kmeans_leaf`), so lam = 0 is k-means.
* grid="uniform": rate-distortion optimised rounding onto a uniform grid with 0 on it, of step
  ``max(sqrt(6 lam Var(W) / ln 2), range / (levels - 1))``: the high-rate optimum (D = step^2 / 12,
  R = h(W) - log2 step), but at most ``2**max_bits`` levels over the layer's range. Each weight
  takes the grid value minimising ``d + lam * length``, the lengths iterated to a fixed point;
  lam = 0 is round-to-nearest on the min-max grid of ``2**max_bits`` levels.
* grid="trellis": dependent quantization (`quant.trellis`): two interleaved uniform quantizers
  chosen by a 4-state machine, every row's levels chosen jointly by the Viterbi algorithm for
  the same objective, the rate from one static model per quantizer (format "trellis" codes them
  so). At equal rate it has about 1 dB less distortion than scalar rounding at high rate.
  Pruned zeros stay 0 and are coded in the rows (format "trellis" stores every position).

Layers of more than `kmeans.SAMPLE_POINTS` non-zeros iterate on the same sample as k-means and
then assign every weight with the final codebook and code lengths.
"""

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src import ans_model
from lscjax._src.errors import LscError
from lscjax._src.quant import trellis
from lscjax._src.quant.kmeans import check_weights, kmeans_leaf, sample_index
from lscjax._src.quant.lloyd import INITS
from lscjax._src.quant.options import bits_for
from lscjax._src.quant.qarray import QArray, code_dtype
from lscjax._src.quant.uniform import grid_values, uniform_grid
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves

RDQ_INIT = "linear"
"""The default start of the entropy-constrained codebook: k-means from evenly spaced levels. At
high rate the rate-distortion optimum is uniform (Gish-Pierce); from the "density" init, whose
cells are equiprobable, the Lloyd iterations with a rate term stall at a far higher entropy."""

GRIDS = ("kmeans", "uniform", "trellis")
RELATIVE_TO = ("layer", "selection")
"""What each layer's distortion is relative to: its own variance, or that of every selected
weight."""
MAX_BITS = 10
"""The largest `max_bits`: the assignment compares every weight with every code."""
ITERS = 200
TOL = 1e-7
_CHUNK = 1 << 13


def check_lam(lam) -> float:
    """`lam` as a float; LscError unless it is a finite number >= 0."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0 <= lam < math.inf:
        raise LscError(f"lam must be a finite number >= 0, got {lam!r}")
    return float(lam)


def rate_penalty(counts: jax.Array, lam: jax.Array) -> jax.Array:
    """lam x code length float32 [K] of codes with counts [K]; inf for a code no weight holds."""
    lengths = ans_model.code_lengths(counts, jnp)
    return jnp.where(counts > 0, lam * lengths, jnp.inf)


def _envelope(centroids: jax.Array, mu: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The lower envelope of the parabolas ``(x - c_k)^2 + mu_k`` (mu_k = inf: a dropped code).

    For k before j in ascending centroid order the difference of two parabolas is linear in x,
    so j beats k right of one breakpoint, and code k wins on (the largest breakpoint with a
    code below it, the smallest with a code above it) when that interval is not empty.

    Returns:
      (codes int32 [K], thresholds float32 [K]): the winning codes in ascending order, then
      the others; the winners' upper ends, ascending (the last winner's is +inf), then +inf.
    """
    k = centroids.shape[0]
    order = jnp.argsort(centroids)
    c, mu = centroids[order], mu[order]
    alive = jnp.isfinite(mu)
    gap = c[None, :] - c[:, None]  # [k, j]: c_j - c_k
    pair = alive[:, None] & alive[None, :] & (gap > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = (c[:, None] + c[None, :]) / 2 + (mu[None, :] - mu[:, None]) / (2 * gap)
    beaten = ~alive[:, None] | (mu[None, :] < mu[:, None])  # j beats k everywhere
    cross = jnp.where(pair, cross, jnp.where(alive[None, :] & beaten, -jnp.inf, jnp.inf))
    above = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
    upper = jnp.min(jnp.where(above, cross, jnp.inf), axis=1)
    lower = jnp.max(jnp.where(above.T, cross.T, -jnp.inf), axis=1)
    wins = alive & (lower < upper)
    ranked = jnp.argsort(jnp.where(wins, jnp.arange(k), k))
    return order[ranked].astype(jnp.int32), jnp.where(wins, upper, jnp.inf)[ranked]


def assign(points, importance, centroids, penalty) -> jax.Array:
    """The code int32 [n] minimising ``importance * (point - centroid)^2 + penalty`` per point.

    Args:
      points: float32 [n].
      importance: float32 [n] (per point), or [] (one for all: the envelope of the codes'
        parabolas, then a binary search per point), already divided by Var(W).
      centroids, penalty: float32 [K] (penalty inf: a dropped code).
    """
    if importance.ndim == 0:
        codes, thresholds = _envelope(centroids, penalty / importance)
        return codes[jnp.searchsorted(thresholds, points)]
    cost = importance[:, None] * (points[:, None] - centroids[None, :]) ** 2 + penalty[None, :]
    return jnp.argmin(cost, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("iters", "update"))
def ec_lloyd(
    points, importance, centroids, live, lam, *, iters: int, update: bool, tol: float = TOL
):
    """Entropy-constrained Lloyd iterations (ECVQ) on scalar points.

    Starts from the nearest code of each point; then, until the assignment is fixed, the
    objective falls by less than `tol` of itself, or `iters` iterations: each point takes the
    code minimising ``importance * (point - centroid)^2 + lam * length`` (lengths from the
    current counts, `ans_model.code_lengths`), then (when `update`) each centroid moves to its
    points' importance-weighted mean.

    Args:
      points: float32 [n].
      importance: float32 [n] >= 0 or [] (the same for all points), each point's distortion
        weight (its importance / Var(W)).
      centroids: float32 [K] start.
      live: bool [K], the codes that may be used (the others are padding).
      lam: float32 [], the rate weight.
      iters: the most iterations (static).
      update: move the centroids (grid="kmeans") or keep them (a fixed grid) (static).
      tol: relative objective decrease below which the iterations stop.

    Returns:
      (centroids float32 [K], counts float32 [K], objective float32 [iters + 1]): the objective
      ``mean(importance * d) + lam * mean(length)`` after each iteration, the last value repeated
      after the stop.
    """
    k = centroids.shape[0]

    def counts_of(assignment):
        return jax.ops.segment_sum(jnp.ones_like(points), assignment, k)

    def objective(c, assignment, counts):
        lengths = jnp.where(counts > 0, ans_model.code_lengths(counts, jnp), 0.0)
        d = jnp.mean(importance * (points - c[assignment]) ** 2)
        return d + lam * jnp.mean(lengths[assignment])

    assignment = assign(points, importance, centroids, jnp.where(live, 0.0, jnp.inf))
    counts = counts_of(assignment)
    trace = jnp.full((iters + 1,), objective(centroids, assignment, counts), jnp.float32)

    def cond(carry):
        t, *_, done = carry
        return (t < iters) & ~done

    def body(carry):
        t, c, assignment, counts, trace, _ = carry
        new = assign(points, importance, c, rate_penalty(counts, lam))
        fixed = jnp.all(new == assignment)
        counts = counts_of(new)
        if update:
            weight = jnp.broadcast_to(importance, points.shape)
            sums = jax.ops.segment_sum(points * weight, new, k)
            mass = jax.ops.segment_sum(weight, new, k)
            moved = jnp.where(counts > 0, sums / jnp.maximum(mass, 1e-30), c)
            c = jnp.where(fixed, c, moved)
        value = objective(c, new, counts)
        before = trace[t]
        done = fixed | (before - value <= tol * before)
        trace = jnp.where(jnp.arange(iters + 1) > t, value, trace)
        return t + 1, c, new, counts, trace, done

    carry = (jnp.int32(0), centroids, assignment, counts, trace, jnp.bool_(False))
    _, centroids, _, counts, trace, _ = jax.lax.while_loop(cond, body, carry)
    return centroids, counts, trace


@jax.jit
def assign_all(points, importance, centroids, penalty) -> jax.Array:
    """`assign` of points float32 [n] (per-point importance [n]: in chunks of _CHUNK, bounded
    memory) -> int32 [n]."""
    if importance.ndim == 0:
        return assign(points, importance, centroids, penalty)
    n = points.shape[0]
    pad = -n % _CHUNK
    chunks = (
        jnp.pad(points, (0, pad)).reshape(-1, _CHUNK),
        jnp.pad(importance, (0, pad)).reshape(-1, _CHUNK),
    )
    codes = jax.lax.map(lambda c: assign(c[0], c[1], centroids, penalty), chunks)
    return codes.reshape(-1)[:n]


def uniform_levels(w: np.ndarray, lam: float, levels: int, variance: float) -> np.ndarray:
    """The uniform grid float32 [<= levels] of a layer w (0 on it, see the module docstring),
    its distortion relative to `variance`."""
    lo_hi = jnp.asarray(w, jnp.float32).reshape(1, -1)
    scale, zero = uniform_grid(lo_hi, levels - 1)  # the min-max grid of `levels` levels
    finest = float(scale[0])
    step = max(finest, math.sqrt(6 * lam * variance / math.log(2)))
    if step == finest:
        return np.asarray(grid_values(scale, zero, levels - 1)[0])
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    maxq = min(levels - 1, math.ceil((hi - lo) / step))
    zero = round(-lo / step)
    return np.asarray(grid_values(jnp.float32([step]), jnp.float32([zero]), maxq)[0])


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer made ready for `solve` at any lam (the lam-independent work done once).

    Attributes:
      path: the leaf path.
      values: float32 [N], the weights flattened.
      nonzero: int64 [m], positions of the coded (non-zero) weights.
      variance: the variance the distortion is relative to (the layer's, or the selection's).
      importance: float32 [m] or [] (the same for all), distortion weight / variance.
      sample: int64 [<= m], the positions in `nonzero` the iterations run on.
      start: float32 [K] the k-means start codebook (grid="kmeans"; entry 0 = 0.0 left out),
        or None (grid="uniform").
      grid, max_bits: as in `rdq`.
      shape: the leaf's shape.
    """

    path: str
    values: np.ndarray
    nonzero: np.ndarray
    variance: float
    importance: np.ndarray
    sample: np.ndarray
    start: np.ndarray | None
    grid: str
    max_bits: int
    shape: tuple

    @property
    def reserved(self) -> int:
        """1 when the layer has pruned zeros (code 0 = 0.0, not coded), else 0."""
        return int(self.nonzero.size < self.values.size)


def prepare(
    path: str,
    w,
    *,
    grid: str,
    max_bits: int,
    weights,
    init: str,
    key,
    variance: float | None = None,
) -> Layer:
    """A `Layer` of the weights w (any shape), for `solve`.

    Args:
      path: the leaf path (error messages).
      w: float array of any shape.
      grid, max_bits, init: as in `rdq`.
      variance: the variance the distortion is relative to; None: w's own.
      weights: None or float array >= 0 shaped like `w`: per-weight importance.
      key: PRNG key of the random k-means inits.

    Raises:
      LscError: grid="uniform" on a pruned layer with max_bits = 1 (names `path`).
    """
    w = np.asarray(w, np.float32)
    values = w.reshape(-1)
    nonzero = np.flatnonzero(values)
    reserved = int(nonzero.size < values.size)
    kept = values[nonzero]
    importance = np.float32(1.0)
    if weights is not None:
        importance = np.asarray(weights, np.float32).reshape(-1)[nonzero]
        mean = importance.mean() if importance.size else 0.0
        importance = importance / mean if mean > 0 else np.ones_like(importance)
    variance = max(
        float(np.var(values)) if variance is None else variance, np.finfo(np.float32).tiny
    )
    importance = importance / variance
    start = None
    if grid == "kmeans" and kept.size:
        first = kmeans_leaf(w, max_bits, init=init, iters=1000, key=key, weights=weights)
        start = np.asarray(first.codebook)[reserved:]
    if grid == "uniform" and 2**max_bits - reserved < 2:
        raise LscError(f"leaf {path!r}: grid='uniform' on a pruned layer needs max_bits >= 2")
    return Layer(
        path,
        values,
        nonzero,
        variance,
        importance,
        sample_index(kept),
        start,
        grid,
        max_bits,
        w.shape,
    )


def solve(layer: Layer, lam: float) -> QArray:
    """The layer quantized at rate weight `lam` (see `rdq`); a "kmeans" QArray."""
    shape, reserved = tuple(layer.shape), layer.reserved
    if layer.nonzero.size == 0:
        return QArray(jnp.zeros(shape, jnp.uint8), jnp.zeros((1,), jnp.float32), "kmeans", 1, shape)
    if layer.grid == "trellis":
        importance = layer.importance
        if np.ndim(importance):
            importance = np.zeros(layer.values.size, np.float32)
            importance[layer.nonzero] = layer.importance
        codes, book, bits = trellis.quantize(
            layer.values, importance, lam, layer.max_bits, shape, layer.variance
        )
        codes = jnp.asarray(codes.reshape(shape).astype(code_dtype(2**bits)))
        return QArray(codes, jnp.asarray(book), "kmeans", bits, shape)
    kept = layer.values[layer.nonzero]
    if layer.grid == "kmeans":
        centroids = layer.start
    else:
        centroids = uniform_levels(layer.values, lam, 2**layer.max_bits - reserved, layer.variance)
    live = np.arange(2**layer.max_bits - reserved) < centroids.size
    centroids = np.pad(centroids, (0, live.size - centroids.size))
    importance = layer.importance
    centroids, counts, _ = ec_lloyd(
        jnp.asarray(kept[layer.sample]),
        jnp.asarray(importance if np.ndim(importance) == 0 else importance[layer.sample]),
        jnp.asarray(centroids, jnp.float32),
        jnp.asarray(live),
        jnp.float32(lam),
        iters=ITERS,
        update=layer.grid == "kmeans",
    )
    assignment = np.asarray(
        assign_all(jnp.asarray(kept), jnp.asarray(importance), centroids, rate_penalty(counts, lam))
    )
    codes = np.zeros(layer.values.size, np.int64)
    codes[layer.nonzero] = assignment + reserved
    book = np.concatenate([np.zeros(reserved, np.float32), np.asarray(centroids)])
    return compacted(codes.reshape(shape), book)


def compacted(codes: np.ndarray, codebook: np.ndarray) -> QArray:
    """The "kmeans" QArray of int codes [shape] into codebook float32 [K], the entries no code
    uses dropped (the others keep their order) and bits = ceil(log2 of the entries left)."""
    used = np.bincount(codes.reshape(-1), minlength=codebook.size) > 0
    renumber = np.cumsum(used) - 1
    bits = bits_for(int(used.sum()))
    return QArray(
        jnp.asarray(renumber[codes].astype(code_dtype(2**bits))),
        jnp.asarray(codebook[used], jnp.float32),
        "kmeans",
        bits,
        tuple(codes.shape),
    )


def check_max_bits(max_bits, grid: str = "kmeans") -> int:
    """`max_bits` as an int; LscError unless it is an int in [1, MAX_BITS] (grid "trellis":
    [2, trellis.MAX_BITS])."""
    low, high = (2, trellis.MAX_BITS) if grid == "trellis" else (1, MAX_BITS)
    if (
        isinstance(max_bits, bool)
        or not isinstance(max_bits, int | np.integer)
        or not low <= max_bits <= high
    ):
        raise LscError(
            f"max_bits must be an int in [{low}, {high}] for grid {grid!r}, got {max_bits!r}"
        )
    return int(max_bits)


def selection_variance(leaves) -> float:
    """The variance of the weights of (path, leaf) pairs taken together as their own layers:
    ``sum N Var(W) / sum N`` (each leaf about its own mean), 0.0 for no weights."""
    count = sum(int(np.size(leaf)) for _, leaf in leaves)
    spread = sum(
        int(np.size(leaf)) * float(np.var(np.asarray(leaf, np.float32))) for _, leaf in leaves
    )
    return spread / count if count else 0.0


def prepare_all(
    params,
    *,
    grid: str,
    max_bits,
    weights,
    where: Where,
    init: str,
    seed: int,
    relative_to: str = "layer",
) -> dict[str, Layer]:
    """{path: Layer} of the selected leaves, every argument checked (see `rdq`)."""
    if grid not in GRIDS:
        raise LscError(f"grid must be one of {GRIDS}, got {grid!r}")
    if relative_to not in RELATIVE_TO:
        raise LscError(f"relative_to must be one of {RELATIVE_TO}, got {relative_to!r}")
    max_bits = check_max_bits(max_bits, grid)
    if init not in INITS:
        raise LscError(f"init must be one of {INITS}, got {init!r}")
    leaves = selected_leaves(params, where)
    for path, leaf in leaves:
        check_float_leaf(path, leaf)
    importance = check_weights(params, weights, where)
    key = jax.random.key(seed)
    variance = selection_variance(leaves) if relative_to == "selection" else None
    return {
        path: prepare(
            path,
            leaf,
            grid=grid,
            max_bits=max_bits,
            weights=importance.get(path),
            init=init,
            key=jax.random.fold_in(key, i),
            variance=variance,
        )
        for i, (path, leaf) in enumerate(leaves)
    }


def solve_all(params, layers: dict[str, Layer], lam: float):
    """The params with `solve(layer, lam)` at every prepared leaf."""
    return map_selected(
        lambda p, _: solve(layers[p], lam), params, where=lambda p, _: p in layers, fill="keep"
    )


def rdq(
    params,
    lam,
    *,
    grid: str = "kmeans",
    max_bits: int = 8,
    weights=None,
    where: Where = None,
    init: str = RDQ_INIT,
    seed: int = 0,
    relative_to: str = "layer",
):
    """Entropy-constrained quantization per layer: minimise D / Var(W) + lam x bits per weight.

    Each selected layer's quantized weights minimise its relative distortion (mean squared
    error over Var(W), importance-weighted when `weights` is given) plus `lam` times the bits
    per weight that rANS pays for its codes under the coder's static model (`ans_model`). Pruned
    zeros keep code 0 = 0.0 and are not coded; the rate counts the non-zero weights' codes. See
    the module docstring for the two grids. Larger `lam` gives fewer bits and more distortion;
    `lscjax.quant.rdq_for_target` finds the `lam` that meets a size or quality target.

    Args:
      params: pytree of float arrays.
      lam: the rate weight, a number >= 0 (relative distortion per bit per weight; at high rate
        a layer's relative distortion falls by a factor 4 per bit, so lam ~ 2 ln 2 x the relative
        distortion wanted). 0: plain k-means (grid="kmeans") or round-to-nearest
        (grid="uniform") with ``2**max_bits`` codes.
      grid: "kmeans" (entropy-constrained codebook), "uniform" (RDO rounding onto a uniform
        grid) or "trellis" (dependent quantization; code with format "trellis").
      max_bits: at most ``2**max_bits`` codes per layer (the start codebook), an int in
        [1, MAX_BITS]; for "trellis" in [2, trellis.MAX_BITS], the grid's 2**max_bits - 1
        points covering the largest weight magnitude (the result takes the fewest bits that
        hold the points it uses).
      weights: optional pytree like `params` with a float array >= 0 of each selected leaf's
        shape: per-weight importance (e.g. a Hessian diagonal), weighting the distortion.
      where: selection (default: 'kernel' leaves with ndim >= 2).
      init: the k-means init of grid="kmeans" (as `lscjax.quant.kmeans`; default RDQ_INIT,
        "linear").
      seed: PRNG seed of the "random" and "kmeans++" inits (folded with the leaf index).
      relative_to: "layer" (each layer's distortion over its own Var(W): lam is a trade of
        relative distortion per layer) or "selection" (every layer's over the variance of all
        selected weights, ``sum N Var(W) / sum N``: one slope of squared error per bit for
        all, so that the selection's total squared error at its total bits is the least; the
        choice for a whole-model size or weight-MSE target).

    Returns:
      The params with a "kmeans" QArray at every selected leaf: codebook float32 [K] of the codes
      in use (entry 0 = 0.0 when the layer has zeros), ``bits = ceil(log2 K)``, codes uint8 /
      uint16 of the leaf's shape (grid "trellis": the union grid, K = 2**bits - 1, 0.0 at
      entry 2**(bits - 1) - 1); other leaves unchanged.

    Raises:
      LscError (a ValueError): lam negative or not finite, unknown grid, init or relative_to,
        max_bits outside [1, MAX_BITS], weights missing or misshapen, a selected leaf that is
        not floating point or holds NaN/Inf, an empty selection (messages name the argument or
        the leaf path).

    Example:
      >>> q = lscjax.quant.rdq(params, 1e-2)  # about 4 bits per weight for Gaussian weights
      >>> encoded = lscjax.coding.encode(q["Dense_0"]["kernel"], "dense", entropy="ans")
      >>> bits_per_weight = encoded.value_bits / q["Dense_0"]["kernel"].codes.size
    """
    lam = check_lam(lam)
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
    return solve_all(params, layers, lam)
