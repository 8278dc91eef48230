"""Lloyd's k-means in JAX: jitted, vectorized over points, run to convergence, with a distortion trace.

Points are float32 [n, d]. For d == 1 the nearest centroid is found by binary search over the
sorted centroids' midpoints (O(n log k) time, O(n) memory), for d > 1 by a dense [n, k] distance
matrix. Only the points flagged valid take part (pruned zeros are left out by the caller).

`sorted_lloyd` runs the same scalar iterations on the host over sorted points: each cluster is
then a run of consecutive points, so one iteration costs O(k log n) with prefix sums instead of
O(n), and nothing is compiled (large layers, `lscjax._src.quant.kmeans`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

INITS = ("linear", "density", "random", "kmeans++")


def nearest(points: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid. points float32 [n, d], centroids float32 [k, d] -> int32 [n]."""
    if points.shape[1] == 1:
        order = jnp.argsort(centroids[:, 0])
        ordered = centroids[order, 0]
        midpoints = (ordered[1:] + ordered[:-1]) / 2
        return order[jnp.searchsorted(midpoints, points[:, 0])].astype(jnp.int32)
    sq = jnp.sum(centroids**2, axis=1) - 2 * points @ centroids.T
    return jnp.argmin(sq, axis=1).astype(jnp.int32)


def _distortion(points, weight, centroids, assignment) -> jax.Array:
    err = jnp.sum((points - centroids[assignment]) ** 2, axis=1)
    return jnp.sum(weight * err) / jnp.maximum(jnp.sum(weight), 1e-30)


@functools.partial(jax.jit, static_argnames=("iters",))
def lloyd(
    points: jax.Array,
    valid: jax.Array,
    init: jax.Array,
    *,
    iters: int,
    tol: float | jax.Array = 0.0,
    weights: jax.Array | None = None,
):
    """Lloyd's iterations (assign to the nearest centroid, move centroids to the weighted means).

    Stops after `iters` iterations, or earlier once the assignment stops changing (every further
    iteration would return the same centroids, so this is exact) or once an iteration lowers the
    distortion by less than ``tol`` times its previous value. A centroid that loses all its points
    keeps its position.

    Args:
      points: float32 [n, d].
      valid: bool [n]; only these points are clustered and counted in the distortion.
      init: float32 [k, d] initial centroids.
      iters: the most iterations (static).
      tol: relative distortion change below which the iterations stop (0: only a fixed
        assignment stops them early).
      weights: optional float32 [n] >= 0 importance of each point (e.g. a Hessian diagonal):
        centroids are weighted means and the distortion a weighted mean squared error. None
        weighs every valid point 1.

    Returns:
      (centroids float32 [k, d], assignment int32 [n], distortion float32 [iters + 1]) where
      ``distortion[t]`` is the (weighted) mean squared error over the valid points of the
      centroids after t iterations with every point at its nearest centroid, and after the
      stopping iteration the final value repeated; it never increases with t (up to float32
      rounding).
    """
    k = init.shape[0]
    weight = valid.astype(jnp.float32)
    if weights is not None:
        weight = weight * jnp.asarray(weights, jnp.float32)
    assignment = nearest(points, init)
    first = _distortion(points, weight, init, assignment)
    trace = jnp.full((iters + 1,), first, jnp.float32)

    def cond(carry):
        t, _, _, _, done = carry
        return (t < iters) & ~done

    def body(carry):
        t, centroids, assignment, trace, _ = carry
        sums = jax.ops.segment_sum(points * weight[:, None], assignment, k)
        counts = jax.ops.segment_sum(weight, assignment, k)
        moved = sums / jnp.maximum(counts, 1e-30)[:, None]
        centroids = jnp.where(counts[:, None] > 0, moved, centroids)
        new = nearest(points, centroids)
        distortion = _distortion(points, weight, centroids, new)
        before = trace[t]
        stalled = (tol > 0) & (before - distortion <= tol * before)
        done = jnp.all((new == assignment) | ~valid) | stalled
        trace = jnp.where(jnp.arange(iters + 1) > t, distortion, trace)
        return t + 1, centroids, new, trace, done

    carry = (jnp.int32(0), init, assignment, trace, jnp.bool_(False))
    _, centroids, assignment, trace, _ = jax.lax.while_loop(cond, body, carry)
    return centroids, assignment, trace


@functools.partial(jax.jit, static_argnames=("k", "method"))
def scalar_init(values: jax.Array, valid: jax.Array, key: jax.Array, *, k: int, method: str):
    """Initial centroids for scalar k-means of the valid `values`.

    Args:
      values: float32 [n]; valid: bool [n] with at least one True.
      key: PRNG key ("random" and "kmeans++").
      k: number of centroids (static).
      method: "linear" (evenly spaced between the min and max valid value: Deep Compression's
        choice, keeps the rare large weights), "density" (evenly spaced in the valid values' CDF),
        "random" (k distinct valid values drawn uniformly; Forgy), "kmeans++" (D^2 sampling).

    Returns:
      float32 [k] centroids.
    """
    n_valid = jnp.sum(valid)
    if method == "linear":
        lo = jnp.min(jnp.where(valid, values, jnp.inf))
        hi = jnp.max(jnp.where(valid, values, -jnp.inf))
        return jnp.linspace(lo, hi, k, dtype=jnp.float32)
    if method == "density":
        ordered = jnp.sort(jnp.where(valid, values, jnp.inf))
        ranks = jnp.round(jnp.linspace(0.0, 1.0, k) * (n_valid - 1)).astype(jnp.int32)
        return ordered[ranks]
    scores = jax.random.uniform(key, values.shape)
    if method == "random":
        if k <= values.size:  # k distinct positions, valid ones first
            picked = jax.lax.top_k(jnp.where(valid, scores, -1.0), k)[1]
        else:  # more centroids than values: draw with replacement
            picked = jax.random.choice(key, values.size, (k,), p=valid / n_valid)
        fallback = values[jnp.argmax(valid)]
        return jnp.where(valid[picked], values[picked], fallback)
    # kmeans++: each next centroid drawn with probability proportional to D(x)^2.
    keys = jax.random.split(key, k)
    first = values[jax.random.categorical(keys[0], jnp.log(valid.astype(jnp.float32)))]

    def pick(i, carry):
        centroids, d2 = carry
        logits = jnp.where(valid & (d2 > 0), jnp.log(jnp.maximum(d2, 1e-30)), -jnp.inf)
        logits = jnp.where(
            jnp.any(jnp.isfinite(logits)), logits, jnp.log(valid.astype(jnp.float32))
        )
        c = values[jax.random.categorical(keys[i], logits)]
        return centroids.at[i].set(c), jnp.minimum(d2, (values - c) ** 2)

    centroids = jnp.full((k,), first, jnp.float32)
    centroids, _ = jax.lax.fori_loop(1, k, pick, (centroids, (values - first) ** 2))
    return centroids


def sorted_lloyd(
    points: np.ndarray,
    init: np.ndarray,
    *,
    iters: int,
    tol: float = 0.0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """`lloyd` for scalar points, on the host: the same assignments, stopping rule and centroid
    updates, with each iteration's sums read from prefix sums over the sorted points.

    A point is assigned as `nearest` does (a point on a midpoint goes to the lower centroid), so
    every cluster is a run of the sorted points; its weighted sum and count are differences of
    float64 prefix sums, and the distortion comes from the prefix sums of the squares.

    Args:
      points: float32 [n] (n >= 1), any order.
      init: float32 [k] initial centroids.
      iters, tol, weights: as in `lloyd` (weights float32 [n] >= 0, or None: all 1).

    Returns:
      float32 [k] centroids (a centroid that loses all its points keeps its position).
    """
    order = np.argsort(points, kind="stable")
    x = np.asarray(points, np.float64)[order]
    w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)[order]
    sums = [np.concatenate([[0.0], np.cumsum(a)]) for a in (w, w * x, w * x * x)]
    total = max(sums[0][-1], 1e-30)
    values = np.asarray(points, np.float32)[order]

    def ranges(c: np.ndarray):
        """(begin, end) [k] of each centroid's run of sorted points; (distortion)."""
        rank = np.argsort(c, kind="stable")
        ordered = c[rank]
        mid = (ordered[1:] + ordered[:-1]) / np.float32(2)
        cut = np.concatenate([[0], np.searchsorted(values, mid, side="right"), [x.size]])
        begin, end = np.empty(c.size, np.int64), np.empty(c.size, np.int64)
        begin[rank], end[rank] = cut[:-1], cut[1:]
        count, first, second = (s[end] - s[begin] for s in sums)
        c64 = c.astype(np.float64)
        error = second - 2 * c64 * first + c64 * c64 * count
        return begin, end, count, first, max(float(error.sum()), 0.0) / total

    centroids = np.asarray(init, np.float32).copy()
    begin, end, count, first, before = ranges(centroids)
    for _ in range(iters):
        moved = (first / np.maximum(count, 1e-30)).astype(np.float32)
        centroids = np.where(count > 0, moved, centroids)
        new_begin, new_end, count, first, distortion = ranges(centroids)
        same = np.all(
            (new_begin == begin) & (new_end == end) | (new_begin == new_end) & (begin == end)
        )
        if same or (tol > 0 and before - distortion <= tol * before):
            break
        begin, end, before = new_begin, new_end, distortion
    return centroids
