"""Dependent (trellis-coded) quantization: two interleaved uniform quantizers and a 4-state machine.

The union grid is ``m * step`` for integers m in [-M, M]. Quantizer 0 reconstructs the even
multiples (level k -> m = 2k), quantizer 1 the odd multiples and zero (k -> m = 2k - sign(k)).
A weight is quantized by the quantizer of the current state and the parity of its level k
picks the next state (`NEXT_STATE`, the 4-state machine of the MPEG NNR and VVC codecs), so
the reconstruction points available to a weight depend on the levels before it. Each chain
(one row along the last axis of a tensor) starts in state 0. The encoder chooses all levels of
a chain jointly by the Viterbi algorithm, minimising ``sum importance x (w - w_hat)^2 / Var(W)
+ lam x bits``, which gains up to about 1 dB of distortion over scalar rounding at equal
rate (trellis-coded quantization, Marcellin & Fischer 1990). The bits of each level come from
the coder's static rANS model, one per quantizer (`coding.trellis` codes the levels with
those two contexts), re-estimated from the chosen levels between passes.

A leaf quantized this way is a plain "kmeans" QArray: codebook the union grid float32
[2**bits - 1] (entry c = float32(c - M) * step in float32, M = 2**(bits - 1) - 1; the
container stores such a codebook as its step alone), codes c = m + M. It is served and
dequantized like any codebook; only format "trellis" needs the state machine, to code the
levels k instead of the codes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src import ans_model
from lscjax._src.errors import LscError

MAX_BITS = 16
"""The most bits per code (uint16 codes); the stored codebook is a lattice, so wide grids cost
nothing to store."""
NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], np.int64)
"""NEXT_STATE[state, k & 1]: the state after a level k in `state` (states 0, 1: quantizer 0;
states 2, 3: quantizer 1)."""
PASSES = 4
"""Viterbi passes: the first by distortion alone, each later one adding lam x the bits of the
levels under the model fitted to the levels of the pass before."""
GRANULAR_GAIN = 0.82
"""The distortion of the trellis at high rate relative to a scalar quantizer of its
quantizers' spacing (about 0.87 dB for 4 states): it sets the step for a lam."""
_CHUNK = 1 << 21
"""The most weights per Viterbi call (its back pointers take 5 bytes per weight and state)."""


def center(bits: int) -> int:
    """M: the code of m = 0 for codes of `bits` bits (2**(bits - 1) - 1)."""
    return 2 ** (bits - 1) - 1


def levels_of(m: np.ndarray, quantizer: np.ndarray) -> np.ndarray:
    """The levels k int64 of union-grid indices m int [...] in `quantizer` (0 / 1) [...] (where
    m is not a point of its quantizer, `valid`, the result means nothing)."""
    m = np.asarray(m, np.int64)
    return np.where(quantizer == 0, m // 2, (m + np.sign(m)) // 2)


def valid(m: np.ndarray, quantizer: np.ndarray) -> np.ndarray:
    """bool [...]: m is a point of its quantizer (even for 0; odd or zero for 1)."""
    m = np.asarray(m, np.int64)
    return np.where(quantizer == 0, m % 2 == 0, (m % 2 == 1) | (m == 0))


def values_of(k: np.ndarray, quantizer: np.ndarray) -> np.ndarray:
    """The union-grid indices m of levels k in `quantizer` (works for NumPy and JAX arrays)."""
    return 2 * k - quantizer * ((k > 0).astype(k.dtype) - (k < 0).astype(k.dtype))


def chains(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The levels k and quantizers (int64, both m's shape) of union-grid indices m int [R, C]
    along each row from state 0; the quantizer of an invalid point is its state's."""
    m = np.asarray(m, np.int64)
    k = np.zeros_like(m)
    q = np.zeros_like(m)
    state = np.zeros(m.shape[0], np.int64)
    for j in range(m.shape[1]):
        q[:, j] = state >> 1
        k[:, j] = levels_of(m[:, j], q[:, j])
        state = NEXT_STATE[state, k[:, j] & 1]
    return k, q


def _candidates(x, quantizer: int):
    """Levels int32 [R, 5] (quantizer 0) or [R, 6] (1) near x float32 [R] in units of the union
    step: the two nearest points' levels, their neighbours and 0 (both parities near x, and
    the cheapest level)."""
    if quantizer == 0:
        base = jnp.floor(x / 2).astype(jnp.int32)  # levels base, base + 1 bracket x
        near = base[:, None] + jnp.arange(-1, 3, dtype=jnp.int32)
    else:
        sign = jnp.where(x >= 0, 1, -1).astype(jnp.int32)
        base = sign * jnp.floor((jnp.abs(x) + 1) / 2).astype(jnp.int32)
        near = base[:, None] + jnp.arange(-2, 3, dtype=jnp.int32)
    return jnp.concatenate([near, jnp.zeros_like(base)[:, None]], axis=1)


@functools.partial(jax.jit, static_argnames=("kmax",))
def viterbi(x, weight, fixed, lengths, lam, *, kmax: int):
    """The levels of every chain by the Viterbi algorithm.

    Args:
      x: float32 [R, C], the weights over the union step (chains along axis 1).
      weight: float32 [R, C], each weight's distortion weight (importance x step^2 / Var(W)).
      fixed: bool [R, C], positions held at level 0 (pruned zeros).
      lengths: float32 [2, 2 * kmax + 1], the bits of level k in each quantizer at k + kmax.
      lam: float32 [], the rate weight.
      kmax: the largest |k| ((M + 1) / 2; quantizer 0's levels stop at kmax - 1).

    Returns:
      (levels int32 [R, C], quantizers int32 [R, C]).
    """
    rows = x.shape[0]

    def best_by_parity(xj, wj, fj, quantizer):
        """[R, 2] cost and level of the cheapest candidate of each parity."""
        bound = kmax - 1 + quantizer  # quantizer 0's largest point 2k stays <= M = 2 kmax - 1
        k = jnp.clip(_candidates(xj, quantizer), -bound, bound)
        error = (xj[:, None] - values_of(k, quantizer)) ** 2
        cost = wj[:, None] * error + lam * lengths[quantizer][k + kmax]
        cost = jnp.where(fj[:, None] & (k != 0), jnp.inf, cost)
        costs, levels = [], []
        for parity in (0, 1):
            c = jnp.where((k & 1) == parity, cost, jnp.inf)
            pick = jnp.argmin(c, axis=1)
            costs.append(jnp.take_along_axis(c, pick[:, None], 1)[:, 0])
            levels.append(jnp.take_along_axis(k, pick[:, None], 1)[:, 0])
        return jnp.stack(costs, 1), jnp.stack(levels, 1)

    def step(cost, column):
        xj, wj, fj = column
        b0, k0 = best_by_parity(xj, wj, fj, 0)  # states 0, 1
        b1, k1 = best_by_parity(xj, wj, fj, 1)  # states 2, 3
        # arrivals (NEXT_STATE): 0 <- (0, even) (1, odd); 2 <- (0, odd) (1, even);
        # 1 <- (2, even) (3, odd); 3 <- (2, odd) (3, even)
        a = jnp.stack([cost[:, 0] + b0[:, 0], cost[:, 2] + b1[:, 0], cost[:, 0] + b0[:, 1],
                       cost[:, 2] + b1[:, 1]], 1)  # fmt: skip
        b = jnp.stack([cost[:, 1] + b0[:, 1], cost[:, 3] + b1[:, 1], cost[:, 1] + b0[:, 0],
                       cost[:, 3] + b1[:, 0]], 1)  # fmt: skip
        second = b < a
        ka = jnp.stack([k0[:, 0], k1[:, 0], k0[:, 1], k1[:, 1]], 1)
        kb = jnp.stack([k0[:, 1], k1[:, 1], k0[:, 0], k1[:, 0]], 1)
        return jnp.minimum(a, b), (second, jnp.where(second, kb, ka))

    start = jnp.full((rows, 4), jnp.inf, jnp.float32).at[:, 0].set(0.0)
    cost, (second, level) = jax.lax.scan(step, start, (x.T, weight.T, fixed.T))
    first_from = jnp.array([0, 2, 0, 2], jnp.int32)  # the predecessor of each state, choice 0

    def back(state, pointers):
        sec, lev = pointers
        k = jnp.take_along_axis(lev, state[:, None], 1)[:, 0]
        prev = first_from[state] + jnp.take_along_axis(sec, state[:, None], 1)[:, 0]
        return prev, (k, prev >> 1)

    final = jnp.argmin(cost, axis=1).astype(jnp.int32)
    _, (levels, quantizers) = jax.lax.scan(back, final, (second, level), reverse=True)
    return levels.T, quantizers.T


def step_for(values: np.ndarray, lam: float, bits: int, variance: float | None = None) -> float:
    """The union step of a layer: its quantizers' spacing (twice the step) is the high-rate
    optimum ``sqrt(6 lam V / (GRANULAR_GAIN ln 2))``, V the variance the distortion is relative
    to (`variance`; None: Var(values)), but the grid's 2**bits - 1 points cover the largest
    weight magnitude (lam = 0: the finest such grid)."""
    top = float(np.abs(values).max()) if values.size else 0.0
    finest = top / center(bits) if top > 0 else 1.0
    variance = float(np.var(values)) if variance is None else variance
    spacing = math.sqrt(6 * lam * variance / (GRANULAR_GAIN * math.log(2)))
    return max(finest, spacing / 2)


def quantize(
    values: np.ndarray,
    importance: np.ndarray,
    lam: float,
    bits: int,
    shape: tuple,
    variance: float | None = None,
):
    """Trellis-quantize one layer.

    Args:
      values: float32 [N], the weights in C order (exact zeros stay 0).
      importance: float32 [N] or [], distortion weight over `variance`.
      lam: the rate weight; bits: at most this many bits per code (>= 2); shape: the leaf's
        shape.
      variance: the variance the distortion is relative to (None: Var(values)).

    Returns:
      (codes int64 [N] = m + M, codebook float32 [2**b - 1], b): b the fewest bits (>= 2)
      whose grid holds every chosen point, so that the stored codebook stays small.
    """
    if bits < 2:
        raise LscError("grid='trellis' needs max_bits >= 2")
    period = shape[-1] if len(shape) else 1
    step = step_for(values, lam, bits, variance)
    kmax = (center(bits) + 1) // 2
    x = (values / step).reshape(-1, period).astype(np.float32)
    weight = np.broadcast_to(np.float32(importance) * step**2, values.shape).reshape(x.shape)
    fixed = x == 0
    size = max(1, _CHUNK // period)
    lengths = np.zeros((2, 2 * kmax + 1), np.float32)
    levels = quantizers = None
    for done in range(PASSES):
        chosen = [
            viterbi(
                jnp.asarray(x[i : i + size]),
                jnp.asarray(weight[i : i + size], jnp.float32),
                jnp.asarray(fixed[i : i + size]),
                jnp.asarray(lengths),
                jnp.float32(lam if done else 0.0),
                kmax=kmax,
            )
            for i in range(0, x.shape[0], size)
        ]
        levels = np.concatenate([np.asarray(k) for k, _ in chosen]).astype(np.int64)
        quantizers = np.concatenate([np.asarray(q) for _, q in chosen]).astype(np.int64)
        lengths = model_lengths(levels, quantizers, kmax)
    return union_codes(values_of(levels, quantizers).reshape(-1), step)


def model_lengths(levels: np.ndarray, quantizers: np.ndarray, kmax: int) -> np.ndarray:
    """The bits float32 [2, 2 kmax + 1] of each level in each quantizer under the static models
    fitted to the chosen levels (int [...], with their quantizers); a level no weight took is
    priced as half a weight's, so that a later pass can still reach it."""
    counts = np.stack(
        [np.bincount(levels[quantizers == q] + kmax, minlength=2 * kmax + 1) for q in (0, 1)]
    )
    return np.stack(
        [ans_model.code_lengths(np.where(c > 0, c, 0.5).astype(np.float64)) for c in counts]
    ).astype(np.float32)


def union_codes(m: np.ndarray, step: float):
    """(codes m + M, codebook float32 [2**b - 1], b) of union-grid indices m int [...]: b the
    fewest bits (>= 2) whose grid holds every m, the codebook ``float32(c - M) * step``."""
    top = int(np.abs(m).max()) if m.size else 0
    bits = max(2, top.bit_length() + 1)  # the fewest bits with center(bits) >= top
    book = (np.arange(2**bits - 1) - center(bits)).astype(np.float32) * np.float32(step)
    return m + center(bits), book, bits
