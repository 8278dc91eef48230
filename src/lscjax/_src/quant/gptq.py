"""GPTQ (Frantar et al. 2023): error-compensated quantization, one input feature at a time.

The features of each layer are quantized in order (`prune.hessian.lazy_sweep`); the rounding
error of each is spread over the features not yet quantized by the optimal brain surgeon
update, so the layer's output on the calibration inputs stays close. The grid is either a
per-output-channel uniform grid (min-max, asymmetric, optionally per group of input features)
or a k-means codebook (k-means of the weights weighted by their input feature's Hessian
diagonal), one per layer or one per output channel; a k-means codebook is then refit to the
chosen codes by least squares under the Hessian, and sweeps onto the refit codebook alternate
with refits while the layer's output error falls. Zeros of a pruned kernel stay exactly 0, so
GPTQ runs after SparseGPT or Wanda on their masks.
"""

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.prune.hessian import (
    check_block_size,
    check_damp,
    damped,
    inverse_factor,
    lazy_block,
    lazy_sweep,
    matrix_view,
    padded,
    stats_leaves,
)
from lscjax._src.quant import trellis
from lscjax._src.quant.kmeans import DEFAULT_INIT, channel_kmeans_leaf, kmeans_leaf
from lscjax._src.quant.lloyd import nearest
from lscjax._src.quant.options import per_leaf
from lscjax._src.quant.qarray import QArray, check_bits, code_dtype
from lscjax._src.quant.rdq import (
    RDQ_INIT,
    assign,
    check_lam,
    compacted,
    prepare,
    rate_penalty,
    solve,
)
from lscjax._src.quant.uniform import grid_values, uniform_grid
from lscjax._src.tree import Where, map_selected

GRIDS = ("uniform", "kmeans", "trellis")
RATE_PASSES = 3
"""The most rate-aware sweeps (code lengths re-estimated between them)."""
REFITS = 4
"""The most GPTQ sweeps onto a k-means codebook, each followed by a codebook refit."""
REFIT_ELEMENTS = 1 << 24
"""The most elements of one chunk of one-hot codes [d, C, K] in `refit_codebook` (64 MiB of
float32, and as much for H times it): the refit runs over chunks of C output channels."""


@functools.partial(jax.jit, static_argnames=("block", "group"))
def uniform_sweep(wt, u, keep, maxq, *, block: int, group: int):
    """GPTQ onto per-row uniform grids of maxq + 1 levels. wt float32 [n, dp], u [dp, dp], keep
    bool [n, dp], maxq float32 [].

    group == 0: one grid per row, from all its weights; else a grid per row and group of `group`
    features, found from the current (compensated) weights when the sweep reaches the group.

    Returns:
      (Wt float32 [n, dp], codes int32 [n, dp], scale float32 [G, n], zero float32 [G, n]) with
      G = dp // group (1 for group == 0).
    """
    rows, dp = wt.shape
    scale, zero = uniform_grid(wt, maxq)
    groups = dp // group if group else 1
    grids = (jnp.zeros((groups, rows)) + scale, jnp.zeros((groups, rows)) + zero)

    def start(w1, diag1, i1, aux):
        return aux

    def column(w1, i, gi, diag1, aux):
        (scales, zeros), codes = aux
        if group:
            fresh = uniform_grid(jax.lax.dynamic_slice(w1, (0, i), (rows, group)), maxq)
            first = gi % group == 0
            at = gi // group
            scale = jnp.where(first, fresh[0], scales[at])
            zero = jnp.where(first, fresh[1], zeros[at])
            scales = jax.lax.dynamic_update_index_in_dim(scales, scale, at, axis=0)
            zeros = jax.lax.dynamic_update_index_in_dim(zeros, zero, at, axis=0)
        else:
            scale, zero = scales[0], zeros[0]
        w = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        kept = jax.lax.dynamic_index_in_dim(keep, gi, axis=1, keepdims=False)
        code = jnp.where(kept, jnp.clip(jnp.round(w / scale) + zero, 0, maxq), zero)
        codes = jax.lax.dynamic_update_index_in_dim(codes, code.astype(jnp.int32), gi, axis=1)
        return scale * (code - zero), ((scales, zeros), codes)

    aux = (grids, jnp.zeros((rows, dp), jnp.int32))
    out, ((scales, zeros), codes) = lazy_sweep(wt, u, aux, block=block, start=start, column=column)
    return out, codes, scales, zeros


@functools.partial(jax.jit, static_argnames=("block", "reserved"))
def codebook_sweep(wt, u, keep, codebook, penalty=None, norm=None, *, block: int, reserved: bool):
    """GPTQ onto one codebook float32 [K], or one per row [n, K] (entry 0 = exactly 0.0 for
    pruned weights when `reserved`; the others taken by nearest value). Returns (Wt [n, dp],
    codes int32 [n, dp]).

    With `penalty` float32 [K] (lam x each code's length in bits, inf for a dropped code) and
    `norm` float32 [] (1 / the distortion's scale), each weight instead takes the code
    minimising ``norm * (w - c)^2 / U_ii^2 + penalty`` (CERWU's rate-aware rounding: the
    OBS loss of fixing feature i at c, plus lam x its rate).
    """
    rows, dp = wt.shape
    choices = codebook[..., int(reserved) :]
    rates = None if penalty is None else penalty[int(reserved) :]

    def start(w1, diag1, i1, aux):
        return aux

    def column(w1, i, gi, diag1, codes):
        w = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        kept = jax.lax.dynamic_index_in_dim(keep, gi, axis=1, keepdims=False)
        if codebook.ndim == 2:  # per row: the nearest of its own K entries
            pick = jnp.argmin((w[:, None] - choices) ** 2, axis=1).astype(jnp.int32)
        elif rates is None:
            pick = nearest(w[:, None], choices[:, None])
        else:
            pick = assign(w, norm / diag1[i] ** 2, choices, rates)
        code = jnp.where(kept, pick + int(reserved), 0)
        codes = jax.lax.dynamic_update_index_in_dim(codes, code, gi, axis=1)
        if codebook.ndim == 2:
            value = jnp.take_along_axis(codebook, code[:, None], axis=1)[:, 0]
        else:
            value = codebook[code]
        return jnp.where(kept, value, 0.0), codes

    return lazy_sweep(
        wt, u, jnp.zeros((rows, dp), jnp.int32), block=block, start=start, column=column
    )


def refit_codebook(mat, h, codes, codebook, *, reserved: bool):
    """The codebook that minimises the layer's output error for fixed codes.

    With B_c the one-hot codes of channel c ([d, K]), the entries e solve
    ``min sum_c (w_c - B_c e)^T H (w_c - B_c e)`` (one codebook [K]) or, per channel,
    ``min (w_c - B_c e_c)^T H (w_c - B_c e_c)`` (codebooks [n, K]): a K x K linear system each.
    Entries that no weight uses keep their value; with `reserved`, entry 0 stays 0.0. The
    normal equations are accumulated over chunks of output channels whose one-hot codes
    [d, C, K] hold at most REFIT_ELEMENTS elements, so memory does not grow with n.

    Args:
      mat: float32 [d, n], the weights before quantization (zeros: pruned).
      h: float32 [d, d], the damped Hessian (`hessian.damped`).
      codes: int32 [d, n]; codebook: float32 [K] or [n, K].

    Returns:
      float32, the codebook's shape.
    """
    d, n = codes.shape
    per_chunk = max(1, min(n, REFIT_ELEMENTS // max(d * codebook.shape[-1], 1)))
    return _refit(mat, h, codes, codebook, reserved=reserved, per_chunk=per_chunk)


@functools.partial(jax.jit, static_argnames=("reserved", "per_chunk"))
def _refit(mat, h, codes, codebook, *, reserved: bool, per_chunk: int):
    d, n = codes.shape
    k = codebook.shape[-1]
    shared = codebook.ndim == 1
    chunks = -(-n // per_chunk)

    def split(x):  # [d, n] -> [chunks, d, per_chunk], zero-padded
        x = jnp.pad(x, ((0, 0), (0, chunks * per_chunk - n)))
        return x.reshape(d, chunks, per_chunk).transpose(1, 0, 2)

    def normal(args):
        chunk_codes, chunk_mat, valid = args
        onehot = jax.nn.one_hot(chunk_codes, k, dtype=jnp.float32) * valid[None, :, None]
        hb = jnp.einsum("ij,jck->ick", h, onehot)  # H B_c for every channel c of the chunk
        if shared:
            a = jnp.einsum("ick,icl->kl", onehot, hb)[None]
            rhs = jnp.einsum("ick,ic->k", hb, chunk_mat)[None]
        else:
            a = jnp.einsum("ick,icl->ckl", onehot, hb)
            rhs = jnp.einsum("ick,ic->ck", hb, chunk_mat)
        return a, rhs, jnp.sum(onehot, axis=0)

    valid = (jnp.arange(chunks * per_chunk) < n).reshape(chunks, per_chunk)
    a, rhs, used = jax.lax.map(normal, (split(codes), split(mat), valid))
    used = used.reshape(-1, k)[:n]  # [n, K]
    if shared:
        a, rhs = a.sum(axis=(0, 1))[None], rhs.sum(axis=(0, 1))[None]
        free = (jnp.sum(used, axis=0) > 0)[None]
    else:
        a, rhs = a.reshape(-1, k, k)[:n], rhs.reshape(-1, k)[:n]
        free = used > 0
    old = codebook.reshape(-1, k)
    if reserved:
        free = free.at[:, 0].set(False)
    pair = free[:, :, None] & free[:, None, :]
    eye = jnp.eye(k, dtype=bool)[None]
    a = jnp.where(pair, a, jnp.where(eye, 1.0, 0.0))
    rhs = jnp.where(free, rhs, old)
    return jnp.linalg.solve(a, rhs[..., None])[..., 0].reshape(codebook.shape)


@functools.partial(jax.jit, static_argnames=("block", "kmax"))
def trellis_sweep(wt, u, keep, step, lengths, lam, norm, *, block: int, kmax: int):
    """GPTQ onto the trellis (`quant.trellis`): each feature's n weights (one row of the kernel,
    a chain) are quantized together by the Viterbi search, each weighted by its OBS loss
    ``norm / U_ii^2``, before the error is spread over the later features. Returns (levels,
    quantizers), int32 [n, dp] (pruned weights: level 0)."""
    n, dp = wt.shape

    def start(w1, diag1, i1, aux):
        return aux

    def column(w1, i, gi, diag1, aux):
        levels, quantizers = aux
        w = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
        kept = jax.lax.dynamic_index_in_dim(keep, gi, axis=1, keepdims=False)
        weight = jnp.full((1, n), norm * step**2 / diag1[i] ** 2, jnp.float32)
        k, q = trellis.viterbi(w[None] / step, weight, ~kept[None], lengths, lam, kmax=kmax)
        levels = jax.lax.dynamic_update_index_in_dim(levels, k[0], gi, axis=1)
        quantizers = jax.lax.dynamic_update_index_in_dim(quantizers, q[0], gi, axis=1)
        value = trellis.values_of(k[0], q[0]).astype(jnp.float32) * step
        return jnp.where(kept, value, 0.0), (levels, quantizers)

    zeros = jnp.zeros((n, dp), jnp.int32)
    _, aux = lazy_sweep(wt, u, (zeros, zeros), block=block, start=start, column=column)
    return aux


def trellis_leaf(mat, wt, u, keep, bits, lam, *, order, block, shape) -> QArray:
    """Rate-aware GPTQ onto the trellis of the kernel mat float32 [d, n] (see `gptq`)."""
    d, n = mat.shape
    values = np.asarray(mat)
    step = trellis.step_for(values.reshape(-1), lam, bits)
    kmax = (trellis.center(bits) + 1) // 2
    precision = float(jnp.mean(1 / jnp.diagonal(u)[:d] ** 2))  # mean of 1 / [H^-1]_ii
    norm = 1 / max(precision * float(np.var(values)), np.finfo(np.float32).tiny)
    lengths = np.zeros((2, 2 * kmax + 1), np.float32)
    for done in range(trellis.PASSES):
        swept = trellis_sweep(
            wt, u, keep, jnp.float32(step), jnp.asarray(lengths), jnp.float32(lam if done else 0.0),
            jnp.float32(norm), block=block, kmax=kmax,
        )  # fmt: skip
        levels, quantizers = (feature_order(a, order, d, n) for a in swept)
        lengths = trellis.model_lengths(levels, quantizers, kmax)
    codes, book, used = trellis.union_codes(trellis.values_of(levels, quantizers), step)
    return QArray(
        jnp.asarray(codes.reshape(shape).astype(code_dtype(2**used))), book, "kmeans", used, shape
    )


def feature_order(swept, order, d: int, n: int) -> np.ndarray:
    """int64 [d, n]: the sweep's per-row results [n', dp'] (features in the sweep's `order`,
    padded) back in the kernel's feature order."""
    out = np.zeros((d, n), np.int64)
    out[np.asarray(order)] = np.asarray(swept)[:n, :d].T
    return out


def output_error(mat, h, codes, codebook):
    """``tr((W - Q)^T H (W - Q))``, the layer's output error on the calibration inputs, of
    codes int32 [d, n] onto codebook float32 [K] or [n, K] (mat float32 [d, n], h [d, d])."""
    if codebook.ndim == 1:
        values = codebook[codes]
    else:
        values = jnp.take_along_axis(codebook, codes.T, axis=1).T
    e = mat - values
    return jnp.sum(e * (h @ e))


def alternated(mat, h, wt, u, keep, codebook, order, block, reserved):
    """GPTQ sweeps onto a k-means codebook alternated with `refit_codebook`.

    Each sweep rounds onto the last refit codebook and each refit fits the codebook to the
    sweep's codes, for at most REFITS rounds or until the output error (`output_error`) stops
    falling; the codes and codebook of the round with the smallest error are returned (codes
    int32 [d, n] in feature order, codebook float32 of the given shape).
    """
    d, n = mat.shape
    best = None
    for _ in range(REFITS):
        _, swept = codebook_sweep(wt, u, keep, codebook, block=block, reserved=reserved)
        codes = jnp.asarray(feature_order(swept, order, d, n), jnp.int32)
        codebook = refit_codebook(mat, h, codes, codebook, reserved=reserved)
        error = float(output_error(mat, h, codes, codebook))
        if best is not None and error >= best[0]:
            break
        best = (error, codes, codebook)
    return best[1], jnp.asarray(best[2], jnp.float32)


def rate_aware_sweeps(path, mat, wt, u, keep, importance, bits, lam, *, order, block, init, key):
    """Rate-aware GPTQ of the kernel mat float32 [d, n] (see `gptq`'s `lam`) -> QArray.

    The codebook and the first code lengths are `rdq`'s (grid="kmeans", the Hessian diagonal
    as importance); each sweep then rounds with those lengths and the lengths are re-estimated
    from its codes, for at most RATE_PASSES sweeps or until the code counts stop changing.
    `wt`, `u` and `keep` hold the features in the sweep's `order` (int [d]).
    """
    d, n = mat.shape
    start = solve(
        prepare(path, mat, grid="kmeans", max_bits=bits, weights=importance, init=init, key=key),
        lam,
    )
    k = 2**bits  # padded with unused entries (penalty inf): one compile per bits
    book = jnp.pad(start.codebook, (0, k - start.codebook.shape[0]))
    coded = np.asarray(mat) != 0
    counts = np.bincount(np.asarray(start.codes)[coded].astype(np.int64), minlength=k)
    precision = float(jnp.mean(1 / jnp.diagonal(u)[:d] ** 2))  # mean of 1 / [H^-1]_ii
    norm = jnp.float32(1 / max(precision * float(np.var(mat)), np.finfo(np.float32).tiny))
    reserved = not bool(coded.all())
    for _ in range(RATE_PASSES):
        penalty = rate_penalty(jnp.asarray(counts, jnp.float32), jnp.float32(lam))
        _, codes_swept = codebook_sweep(
            wt, u, keep, book, penalty, norm, block=block, reserved=reserved
        )
        codes = feature_order(codes_swept, order, d, n)
        fresh = np.bincount(codes[coded].astype(np.int64), minlength=k)
        if np.array_equal(fresh, counts):
            break
        counts = fresh
    return compacted(codes, np.asarray(book))


def gptq_leaf(
    path,
    w,
    stats,
    bits,
    *,
    grid,
    group_size,
    block_size,
    damp,
    init,
    key,
    act_order=False,
    lam=0.0,
    per_channel=False,
) -> QArray:
    """One kernel as a QArray by GPTQ (see `gptq`)."""
    d = int(stats.gram.shape[0])
    mat = matrix_view(path, w, d, layout=grid == "uniform")
    n = mat.shape[1]
    group = d if group_size is None else group_size
    if d % group:
        raise LscError(f"leaf {path!r}: group_size {group} does not divide {d} input features")
    block = lazy_block(block_size, d, group if group_size is not None else 1)
    gram = jnp.asarray(stats.gram, jnp.float32)
    order = jnp.arange(d)
    if act_order:  # the features of the largest H_ii first (GPTQ's "act-order")
        order = jnp.argsort(-jnp.diagonal(gram), stable=True)
    u = inverse_factor(gram[order][:, order], damp)
    wt, u = padded(mat[order].T, u, block)
    keep = wt != 0
    shape = tuple(np.shape(w))
    if grid == "uniform":
        maxq = 2**bits - 1
        wide = 0 if group_size is None else group
        _, codes, scales, zeros = uniform_sweep(
            wt, u, keep, jnp.float32(maxq), block=block, group=wide
        )
        book = grid_values(scales[: d // group, :n], zeros[: d // group, :n], maxq)  # [G, n, K]
        book = book[0] if group_size is None else book
        codes = feature_order(codes, order, d, n).reshape(shape).astype(code_dtype(2**bits))
        return QArray(codes, jnp.asarray(book, jnp.float32), "kmeans", bits, shape)
    if not bool(jnp.any(mat != 0)):  # nothing to cluster: all codes 0 -> 0.0
        return QArray(
            jnp.zeros(shape, jnp.uint8), jnp.zeros((1,), jnp.float32), "kmeans", bits, shape
        )
    if grid == "trellis":
        return trellis_leaf(mat, wt, u, keep, bits, lam, order=order, block=block, shape=shape)
    importance = jnp.broadcast_to(
        jnp.diagonal(jnp.asarray(stats.gram, jnp.float32))[:, None], mat.shape
    )
    reserved = bool(jnp.any(mat == 0))  # code 0: exactly the pruned zeros
    if lam > 0:
        q = rate_aware_sweeps(
            path,
            mat,
            wt,
            u,
            keep,
            importance,
            bits,
            lam,
            order=order,
            block=block,
            init=init,
            key=key,
        )
        codes = jnp.asarray(q.codes, jnp.int32)  # [d, n]
        book = refit_codebook(mat, damped(gram, damp), codes, q.codebook, reserved=reserved)
        return dataclasses.replace(q, codebook=book, shape=shape, codes=q.codes.reshape(shape))
    clustered = channel_kmeans_leaf if per_channel else kmeans_leaf
    book = clustered(mat, bits, init=init, iters=1000, key=key, weights=importance).codebook
    codes, book = alternated(mat, damped(gram, damp), wt, u, keep, book, order, block, reserved)
    return QArray(codes.reshape(shape).astype(code_dtype(2**bits)), book, "kmeans", bits, shape)


def gptq(
    params,
    stats: Mapping,
    bits,
    *,
    grid: str = "uniform",
    group_size: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    init: str | None = None,
    act_order: bool = False,
    where: Where = None,
    seed: int = 0,
    lam: float = 0.0,
    per_channel: bool = False,
):
    """GPTQ: quantize each calibrated kernel with error compensation (Frantar et al. 2023).

    Each kernel W [d, n] (the matrix view; d = its stats' input features) is quantized one
    input feature at a time; the rounding error of each feature is spread over the features
    not yet quantized so as to minimise ``||X W - X Q||`` on the calibration inputs X (Hessian
    ``H = X^T X`` damped by ``damp * mean(diag(H))``, lazy batches of `block_size`). Exact
    zeros (pruned weights, e.g. from `lscjax.prune.sparsegpt`) stay exactly 0.

    Args:
      params: pytree of float arrays (kernels as in `lscjax.prune.sparsegpt`).
      stats: {path: LayerStats} (from `lscjax.Calibration`), one per quantized kernel.
      bits: bits per code, an int in [1, 16] or a {path: bits} map.
      grid: "uniform": a min-max asymmetric grid of ``2**bits`` levels per output channel
        (per group of `group_size` input features and channel when given), 0 on every grid;
        the QArray's codebook holds each grid's values, float32 [n, 2**bits] (or
        [d / group_size, n, 2**bits]). "kmeans": the layer's k-means codebook, k-means of its
        non-zero weights weighted by their input feature's Hessian diagonal H_ii (codebook
        float32 [2**bits], entry 0 = 0.0 when the kernel has zeros), as `lscjax.quant.kmeans`;
        after each sweep the codebook is refit to the codes (`refit_codebook`: the entries
        that minimise ``||X W - X Q||`` for those codes) and the next sweep rounds onto the
        refit codebook, for at most REFITS sweeps while the error falls. "trellis":
        dependent quantization (`quant.trellis`, as `lscjax.quant.rdq(grid="trellis")`;
        store with format "trellis"): each input feature's weights across the outputs, one
        row of the kernel, are quantized together by the Viterbi search for their OBS loss
        plus lam x bits (the rate from one static model per quantizer, re-estimated between
        trellis.PASSES sweeps), then compensated as GPTQ does; ``bits`` (>= 2) bounds the
        union grid, whose step is set by lam and the kernel's variance.
      group_size: input features per uniform grid (must divide d); None: one per channel.
      block_size: features per lazy batch (rounded up to a multiple of group_size).
      damp: the damping, a fraction of the Hessian's mean diagonal, in [0, 1].
      init: the k-means init (grid="kmeans"); None: `lscjax.quant.kmeans`'s default, or
        for lam > 0 `rdq`'s (RDQ_INIT).
      act_order: quantize the input features in decreasing order of H_ii (Frantar et al.'s
        "act-order": the features whose errors cost most are fixed first, while the most
        features remain to absorb them) instead of in index order; not with group_size.
      where: the leaves to quantize (default: every leaf that `stats` has).
      seed: PRNG seed of the random k-means inits.
      lam: rate weight (grid="kmeans" or "trellis"; 0: plain GPTQ; for "trellis" also the
        union grid's step). lam > 0 makes the rounding rate-aware,
        as CERWU (Conzelmann & Bamler 2025): each weight takes the code minimising its OBS
        loss ``(w - c)^2 / [H^-1]_ii`` over ``mean_i(1 / [H^-1]_ii) Var(W)`` plus lam x the code's
        length under the coder's rANS model (`lscjax.quant.rdq`'s scale-free lam). The
        codebook and first lengths are `rdq`'s with the Hessian diagonal as importance; the
        lengths are re-estimated between sweeps (at most RATE_PASSES), and the codebook is
        refit to the final codes (the rate, set by the codes, does not change). Entries no
        code uses are dropped, so ``bits`` can come out below the requested bits. Pruned
        zeros stay 0 and are not coded (grid "trellis": coded in their rows).
      per_channel: grid="kmeans" with one codebook per output channel (SqueezeLLM's
        per-channel non-uniform codebooks: each channel's weights clustered alone, weighted by
        H_ii; codebook float32 [n, 2**bits], entry 0 = 0.0 when the kernel has zeros), each
        channel rounded onto its own; not with lam > 0.

    Returns:
      The params with a "kmeans" QArray at every selected kernel (codes uint8 / uint16 of the
      kernel's shape), other leaves unchanged.

    Raises:
      LscError (a ValueError): bad bits, grid, group_size, block_size, damp or lam; group_size
        with grid="kmeans" or act_order; lam > 0 with grid="uniform"; per_channel with
        grid="uniform", "trellis" or lam > 0; grid "trellis" with bits < 2; a selected leaf without stats or not matching them; an
        empty selection (messages name the path).

    Example:
      >>> stats = lscjax.Calibration(apply_fn, [images]).stats(params)
      >>> q = lscjax.quant.gptq(params, stats, 4, grid="kmeans")
    """
    if grid not in GRIDS:
        raise LscError(f"grid must be one of {GRIDS}, got {grid!r}")
    lam = check_lam(lam)
    if lam > 0 and grid == "uniform":
        raise LscError("lam > 0 (rate-aware GPTQ) applies to grid='kmeans' or 'trellis' only")
    if not isinstance(per_channel, bool):
        raise LscError(f"per_channel must be True or False, got {per_channel!r}")
    if per_channel and (grid != "kmeans" or lam > 0):
        raise LscError(
            "per_channel applies to grid='kmeans' with lam=0 (the uniform grids are per "
            "channel already)"
        )
    if group_size is not None:
        if grid != "uniform":
            raise LscError("group_size applies to grid='uniform' only")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise LscError(f"group_size must be None or an int >= 1, got {group_size!r}")
        if act_order:
            raise LscError("act_order applies without group_size only")
    block_size = check_block_size(block_size)
    damp = check_damp(damp)
    leaves = stats_leaves(params, stats, where)
    key = jax.random.key(seed)
    if init is None:
        init = RDQ_INIT if lam > 0 else DEFAULT_INIT
    done = {}
    for i, (path, w, s) in enumerate(leaves):
        leaf_bits = check_bits(path, per_leaf(bits, path, "bits"))
        if grid == "trellis" and leaf_bits < 2:
            raise LscError(f"leaf {path!r}: grid='trellis' needs bits >= 2, got {leaf_bits}")
        done[path] = gptq_leaf(
            path,
            w,
            s,
            leaf_bits,
            grid=grid,
            group_size=group_size,
            block_size=block_size,
            damp=damp,
            init=init,
            key=jax.random.fold_in(key, i),
            act_order=bool(act_order),
            lam=lam,
            per_channel=per_channel,
        )
    return map_selected(lambda p, _: done[p], params, where=lambda p, _: p in done, fill="keep")
