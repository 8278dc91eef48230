"""The dense target of a layer whose inputs earlier compressed layers have changed.

Layer-sequential calibration (`Calibration.sequential`) measures each layer on the inputs X
[N, d] that the partly compressed model gives it, while the model it should reproduce is the
dense one, whose inputs there are X_dense. The kernel that best does so from X is the least
squares solution of ``min_V ||X V - X_dense W||^2``, ``W* = H^-1 X^T X_dense W`` (H = X^T X),
and for every V, ``||X V - X_dense W||^2 = ||X V - X W*||^2 + const``: pruning or quantizing
W* against H (SparseGPT, `refit`, GPTQ, unchanged) minimises the error to the dense model's
outputs, not to the layer's own outputs on drifted inputs, so that each layer corrects the
error of those before it (the asymmetric calibration of GPTAQ, Li et al. 2025).

Damped as SparseGPT's Hessian: ``W* = W + A^-1 (C - H) W / s``, A = H / s + lambda I (s the
mean diagonal of H) and C = X^T X_dense, the minimiser of ``||X V - X_dense W||^2 / s +
lambda ||V - W||^2``: W* = W when X = X_dense, and a larger lambda keeps it nearer W. A
kernel's zero weights count as pruned (as in GPTQ) and stay zero: each output channel is then
solved on its non-zero weights only, by `refit`'s conjugate gradients (which solve the dense
case too).
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lscjax._src.errors import LscError
from lscjax._src.prune.hessian import check_damp, damped, gram_scale, matrix_view, stats_leaves
from lscjax._src.prune.refit import REFIT_ITERS, conjugate_refit
from lscjax._src.tree import Where, map_selected

TARGET_DAMP = 0.3
"""The default damping of the target, a fraction of the Hessian's mean diagonal. It fits the
drift on the calibration rows only, so it needs more than SparseGPT's 0.01: on
all-MiniLM-L6-v2 (3,979 calibration tokens, SparseGPT 50% + refit, held-out mean cosine,
benchmarks/ptq_ablation.py) 0.01 gave 0.946, below no target (0.949); 0.1: 0.953, 0.3:
0.954, 1.0: 0.954."""


@jax.jit
def target_matrix(w: jax.Array, gram: jax.Array, cross: jax.Array, damp) -> jax.Array:
    """W* float32 [d, n] of the matrix view W [d, n] (see the module docstring), its zeros kept.

    Args:
      w: float32 [d, n]; gram: float32 [d, d] H = X^T X; cross: float32 [d, d] C = X^T X_dense;
      damp: lambda, a fraction of H's mean diagonal.
    """
    a = damped(gram, damp)
    rhs = a @ w + (cross - gram) @ w / gram_scale(gram)
    return conjugate_refit(a, rhs, w != 0, w, iters=REFIT_ITERS)


def dense_target(params, stats: Mapping, *, damp: float = TARGET_DAMP, where: Where = None):
    """Each selected kernel replaced by the one that best reproduces the dense model's layer
    outputs from the layer's inputs in the partly compressed model.

    Args:
      params: pytree of float arrays, the kernels as the dense model has them (their matrix
        views [d, n], d = the stats' input features, input axes first).
      stats: {path: LayerStats} with `cross` (from ``Calibration.sequential(...,
        cross=True)``), one per selected kernel.
      damp: the damping lambda, a fraction of the Hessian's mean diagonal, in [0, 1] (see
        TARGET_DAMP).
      where: the kernels to retarget (default: every leaf that `stats` has).

    Returns:
      `params` with each selected kernel W replaced by ``W + A^-1 (C - H) W / s`` (its shape
      and dtype kept; see the module docstring), its zero weights kept zero: the weights to
      prune, refit or quantize in its place, against the same stats.

    Raises:
      LscError (a ValueError): bad damp; a selected leaf without stats, not matching them, or
        whose stats have no `cross`; an empty selection (messages name the path).

    Example:
      >>> cal = lscjax.Calibration(apply_fn, [images])
      >>> def layer(p, s):
      ...     p = lscjax.prune.dense_target(p, s)
      ...     return lscjax.prune.sparsegpt(p, s, 0.5)[0]
      >>> pruned = cal.sequential(params, layer, cross=True)
    """
    damp = check_damp(damp)
    done = {}
    for path, w, s in stats_leaves(params, stats, where):
        if s.cross is None:
            raise LscError(
                f"leaf {path!r}: its stats have no cross (gather them with "
                "Calibration.sequential(..., cross=True))"
            )
        d = int(np.shape(s.gram)[0])
        if np.shape(s.cross) != (d, d):
            raise LscError(f"leaf {path!r}: cross of shape {np.shape(s.cross)}, expected {(d, d)}")
        mat = matrix_view(path, w, d, layout=False)
        gram, cross = (jnp.asarray(a, jnp.float32) for a in (s.gram, s.cross))
        out = target_matrix(mat, gram, cross, damp)
        done[path] = out.reshape(np.shape(w)).astype(jnp.result_type(w))
    return map_selected(lambda p, _: done[p], params, where=lambda p, _: p in done, fill="keep")
