"""Gradual magnitude pruning during training (Zhu & Gupta 2017) as an optax transform.

The masks live in the optimizer state, so a checkpoint of the state taken mid-schedule resumes
to exactly the masks of an uninterrupted run.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lscjax._src.errors import LscError
from lscjax._src.prune.distributions import layer_sparsities
from lscjax._src.prune.magnitude import check_sparsity
from lscjax._src.train.masking import mask_updates
from lscjax._src.tree import Where, map_selected, selected_leaves


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule:
    """Zhu & Gupta's sparsity schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^p``.

    Sparsity is `initial` before `begin`, `final` from `end` on; masks are recomputed at steps
    ``begin, begin + frequency, ...`` up to `end` (and at `end`). `one_shot` is the case
    begin == end.

    Attributes:
      initial, final: sparsities in [0, 1).
      begin, end: first and last pruning step (0 <= begin <= end).
      frequency: steps between mask updates (>= 1).
      power: the exponent p (3 in Zhu & Gupta).
    """

    initial: float
    final: float
    begin: int
    end: int
    frequency: int
    power: float = 3.0

    def __call__(self, step: jax.Array) -> jax.Array:
        """The target sparsity at `step` (int32 []): float32 []."""
        span = max(self.end - self.begin, 1)
        progress = jnp.clip((step - self.begin) / span, 0.0, 1.0)
        return (
            jnp.float32(self.final) + (self.initial - self.final) * (1.0 - progress) ** self.power
        )

    def is_update(self, step: jax.Array) -> jax.Array:
        """Whether masks are recomputed at `step` (int32 []): bool []."""
        on_grid = ((step - self.begin) % self.frequency == 0) | (step == self.end)
        return (step >= self.begin) & (step <= self.end) & on_grid


def polynomial(
    initial: float, final: float, begin: int, end: int, frequency: int, power: float = 3.0
) -> PolynomialSchedule:
    """Zhu & Gupta's polynomial schedule (see `PolynomialSchedule`), validated.

    Raises:
      LscError: sparsities outside [0, 1), steps with not 0 <= begin <= end, frequency < 1,
        power <= 0.
    """
    check_sparsity(initial, "initial sparsity")
    check_sparsity(final, "final sparsity")
    ints = all(isinstance(v, int) for v in (begin, end, frequency))
    if not (ints and 0 <= begin <= end and frequency >= 1 and power > 0):
        raise LscError(
            f"need ints 0 <= begin <= end, frequency >= 1 and power > 0; got begin={begin!r}, "
            f"end={end!r}, frequency={frequency!r}, power={power!r}"
        )
    return PolynomialSchedule(float(initial), float(final), begin, end, frequency, float(power))


def one_shot(sparsity: float, step: int = 0) -> PolynomialSchedule:
    """Prune once, to `sparsity`, at `step`; the masks stay fixed afterwards."""
    return polynomial(sparsity, sparsity, step, step, 1)


class GradualState(NamedTuple):
    """State of `gradual`.

    Attributes:
      count: int32 []: steps taken.
      masks: the params' structure: bool arrays (True = kept) at the pruned leaves, None elsewhere.
      inner_state: the inner optimizer's state.
    """

    count: jax.Array
    masks: Any
    inner_state: optax.OptState


def ranked_mask(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Bool mask of the `k` largest `scores` for a traced int `k` (ties: lower flat index kept)."""
    flat = scores.reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) < k)
    return keep.reshape(scores.shape)


def _keep(n: int, sparsity: jax.Array) -> jax.Array:
    return jnp.round(n * (1.0 - sparsity)).astype(jnp.int32)


def gradual(
    inner: optax.GradientTransformation,
    schedule: PolynomialSchedule,
    *,
    distribution: str | Mapping[str, float] = "uniform",
    where: Where = None,
) -> optax.GradientTransformation:
    """Wrap `inner` to prune by magnitude along `schedule`, keeping pruned weights at zero.

    At each update step of the schedule the masks are recomputed from the current params'
    magnitudes at the schedule's sparsity; between them they are fixed. Gradients are masked
    before `inner` and its updates after it (as `keep_masks`), and a weight pruned at this
    step gets the update ``-w`` so it becomes exactly 0.

    Args:
      inner: any optax GradientTransformation.
      schedule: `polynomial(...)` or `one_shot(...)`.
      distribution: how the schedule's sparsity s_t spreads over the selected leaves:
        "uniform" (every leaf at s_t), "global" (one magnitude threshold over all leaves),
        "erk", or a {path: final sparsity} map; for "erk" and maps, leaf l is pruned to
        ``s_t * final_l / schedule.final``.
      where: selection (default: 'kernel' leaves with ndim >= 2).

    Returns:
      An optax GradientTransformationExtraArgs (extra keyword arguments of ``update``, e.g.
      optax.lbfgs's value, grad and value_fn, go to `inner`, as in optax.masked) with state
      `GradualState`; its update needs `params`.

    Raises:
      LscError: an unknown distribution, a map not matching the selection, or an update
        called without params.

    Example:
      >>> sched = lscjax.train.polynomial(0.0, 0.9, begin=0, end=2000, frequency=100)
      >>> opt = lscjax.train.gradual(optax.adam(1e-3), sched)
      >>> opt_state = opt.init(params)
      >>> masks = opt_state.masks  # all True at first; updated as training runs
    """
    if distribution != "global" and not isinstance(distribution, Mapping):
        if distribution not in ("uniform", "erk"):
            raise LscError(
                f"distribution must be 'uniform', 'global', 'erk' or a map, got {distribution!r}"
            )

    def new_masks(params, sparsity):
        if distribution == "global":
            leaves = selected_leaves(params, where)
            flat = jnp.concatenate([jnp.abs(w).reshape(-1).astype(jnp.float32) for _, w in leaves])
            keep = ranked_mask(flat, _keep(flat.size, sparsity))
            starts, offset = {}, 0
            for path, w in leaves:
                starts[path], offset = offset, offset + w.size
            return map_selected(
                lambda p, w: keep[starts[p] : starts[p] + w.size].reshape(w.shape),
                params,
                where=where,
            )
        if distribution == "uniform":
            scale = dict.fromkeys((p for p, _ in selected_leaves(params, where)), 1.0)
        else:
            finals = layer_sparsities(
                params,
                distribution if isinstance(distribution, Mapping) else schedule.final,
                "erk",
                where=where,
            )
            scale = {p: s / schedule.final if schedule.final else 0.0 for p, s in finals.items()}
        return map_selected(
            lambda p, w: ranked_mask(
                jnp.abs(w), _keep(w.size, jnp.clip(sparsity * scale[p], 0, 1))
            ),
            params,
            where=where,
        )

    inner = optax.with_extra_args_support(inner)

    def init(params):
        masks = map_selected(lambda _, w: jnp.ones(jnp.shape(w), bool), params, where=where)
        return GradualState(jnp.zeros((), jnp.int32), masks, inner.init(params))

    def update(updates, state, params=None, **extra_args):
        if params is None:
            raise LscError("gradual needs params: call update(updates, state, params)")
        masks = jax.lax.cond(
            schedule.is_update(state.count),
            lambda: new_masks(params, schedule(state.count)),
            lambda: state.masks,
        )
        updates, inner_state = inner.update(
            mask_updates(updates, masks), state.inner_state, params, **extra_args
        )

        def zero_pruned(u, m, w):
            return u if m is None else jnp.where(m, u, -w)

        updates = jax.tree_util.tree_map(
            zero_pruned, updates, masks, params, is_leaf=lambda x: x is None
        )
        return updates, GradualState(state.count + 1, masks, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)
