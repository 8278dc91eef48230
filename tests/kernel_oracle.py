"""The oracle of every block-sparse product: a dense float64 NumPy product, and the tolerances.

Every implementation (the XLA path in both forms, the Pallas GPU and TPU kernels in interpret
mode, `lscjax.sparse.matmul` on each path) is compared with ``x @ W`` on the dense kernel W the
layout was built from, never with another implementation.
"""

import jax.numpy as jnp
import numpy as np

# Largest relative error (max |y - y_ref| / max |y_ref|) of an implementation against
# `dense_matmul`, per dtype of the inputs. Implementations accumulate in float32; bf16 outputs
# are rounded to 8 bits of mantissa.
TOLERANCE = {jnp.dtype(jnp.float32): 1e-4, jnp.dtype(jnp.bfloat16): 2e-2}


def dense_matmul(x, w) -> np.ndarray:
    """x [..., K] @ w [K, N] in float64 NumPy."""
    return np.asarray(x, np.float64) @ np.asarray(w, np.float64)


def rel_error(y, ref) -> float:
    """max |y - ref| / max |ref| (0 for an all-zero ref and y)."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(
        np.max(np.abs(y - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), 1e-30)
    )
