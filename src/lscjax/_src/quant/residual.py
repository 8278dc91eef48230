"""Residual quantization (Gong et al. 2014): each stage quantizes the previous stage's residual."""

import jax
import jax.numpy as jnp

from lscjax._src.quant.lloyd import lloyd, scalar_init
from lscjax._src.quant.options import bits_for, check_count, check_sub_dim, per_leaf
from lscjax._src.quant.qarray import QArray, code_dtype
from lscjax._src.tree import Where, check_float_leaf, map_selected, selected_leaves


def residual_leaf(w, k: int, stages: int, *, iters: int, sub_dim: int | None = None, key=None):
    """One weight array as a "residual" QArray (see `residual`); `key` seeds the vector form."""
    w = jnp.asarray(w, jnp.float32)
    if sub_dim is None:
        rest, code_shape = w.reshape(-1, 1), w.shape
    else:
        rows = w.size // w.shape[-1]
        rest, code_shape = w.reshape(-1, sub_dim), (rows, w.shape[-1] // sub_dim)
    valid = jnp.ones(rest.shape[0], bool)
    codes, codebooks = [], []
    for stage in range(stages):
        if sub_dim is None:
            start = scalar_init(rest[:, 0], valid, jax.random.key(0), k=k, method="linear")[:, None]
        else:  # k distinct residual sub-vectors (repeats only when there are fewer than k)
            pick = jax.random.choice(
                jax.random.fold_in(key, stage), rest.shape[0], (k,), replace=k > rest.shape[0]
            )
            start = rest[pick]
        centroids, assignment, _ = lloyd(rest, valid, start, iters=iters)
        rest = rest - centroids[assignment]
        codes.append(assignment.astype(code_dtype(k)).reshape(code_shape))
        codebooks.append(centroids[:, 0] if sub_dim is None else centroids)
    return QArray(jnp.stack(codes), jnp.stack(codebooks), "residual", bits_for(k), tuple(w.shape))


def residual(
    params,
    k,
    stages,
    *,
    iters: int = 30,
    where: Where = None,
    sub_dim=None,
    seed: int = 0,
):
    """Residual quantization of the selected weights (Gong et al. 2014).

    Stage 1 clusters the weights into k centroids; stage t clusters the residual left by stages
    1..t-1; the dense weight is the sum of the stages' centroids. Two forms:

    * ``sub_dim=None`` (scalar, the default): every weight on its own (scalar k-means, linear
      init). Storage: ``stages * size * ceil(log2 k)`` code bits + ``32 * stages * k``.
    * ``sub_dim=d`` (vectors, as in the paper): each row of the leaf's 2-D view [m, n] (rows =
      all leading axes, n = ``shape[-1]``) is cut into n / d sub-vectors of length d (d = n:
      whole rows, Gong et al.'s setting), and all of them are clustered together at every stage
      (Lloyd, k random distinct sub-vectors as the initial centroids). Storage:
      ``stages * m * (n / d) * ceil(log2 k)`` code bits + ``32 * stages * k * d``.

    Args:
      params: pytree of float arrays.
      k: centroids per stage, an int in [1, 65536] or a {path: k} map.
      stages: number of stages >= 1, an int or a {path: stages} map.
      iters: Lloyd iterations per stage.
      where: selection (default: 'kernel' leaves with ndim >= 2).
      sub_dim: None, or the sub-vector length dividing ``shape[-1]`` (an int or a {path: d}
        map).
      seed: PRNG seed of the vector form's initial centroids (folded with the leaf index).

    Returns:
      The params with a "residual" QArray at every selected leaf, codes uint8/uint16 and
      codebook float32: ``[stages, *shape]`` and [stages, k] (scalar), [stages, m, n / d] and
      [stages, k, d] (vectors); other leaves unchanged.

    Raises:
      LscError (a ValueError): k < 1 or > 65536, stages < 1, sub_dim < 1 or not dividing the row
        length, a leaf that is not floating point (all name the leaf path).
    """
    index = {}
    for i, (path, leaf) in enumerate(selected_leaves(params, where)):
        check_float_leaf(path, leaf)
        check_count(path, per_leaf(k, path, "k"))
        check_count(path, per_leaf(stages, path, "stages"), "stages", most=64)
        if sub_dim is not None:
            check_sub_dim(path, leaf, sub_dim)
        index[path] = i
    key = jax.random.key(seed)

    def one(path, w):
        leaf_k, leaf_stages = per_leaf(k, path, "k"), per_leaf(stages, path, "stages")
        leaf_d = None if sub_dim is None else per_leaf(sub_dim, path, "sub_dim")
        leaf_key = jax.random.fold_in(key, index[path])
        return residual_leaf(w, leaf_k, leaf_stages, iters=iters, sub_dim=leaf_d, key=leaf_key)

    return map_selected(one, params, where=where, fill="keep")
