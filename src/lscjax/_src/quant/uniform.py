"""Uniform quantization grids: per-row asymmetric min-max grids with 0 on every grid."""

import jax
import jax.numpy as jnp


def uniform_grid(x: jax.Array, maxq: int) -> tuple[jax.Array, jax.Array]:
    """Per-row asymmetric min-max grid of x float32 [n, c] (0 always on it): (scale, zero) [n]."""
    lo = jnp.minimum(jnp.min(x, axis=1), 0.0)
    hi = jnp.maximum(jnp.max(x, axis=1), 0.0)
    flat = lo == hi
    lo, hi = jnp.where(flat, -1.0, lo), jnp.where(flat, 1.0, hi)
    scale = (hi - lo) / maxq
    return scale, jnp.round(-lo / scale)


def grid_values(scale: jax.Array, zero: jax.Array, maxq: int) -> jax.Array:
    """The grid values float32 [..., maxq + 1] of scales and zero points [...]."""
    return scale[..., None] * (jnp.arange(maxq + 1, dtype=jnp.float32) - zero[..., None])
